"""GGUF files (llama.cpp, Ollama) in and out, for the `llama` architecture.

Reading memory-maps the file with the `gguf` package's reader and hands out one tensor at a time
under its Hugging Face name: F32/F16 keep their dtype, BF16 becomes ml_dtypes' bfloat16, and the
quantized types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K) are dequantized to float32 by
`gguf.quants.dequantize`. llama.cpp stores q/k rows interleaved for its rotary (convert_hf_to_gguf's
`permute`); they come back in rotate-half order here. Writing streams F32/F16/BF16 tensors with the
`llama.*` metadata and the tokenizer llama.cpp and Ollama read (`weights.gguf_vocab`).
"""
from __future__ import annotations

import functools
import os
import re
import tempfile
from typing import Any, Callable, Mapping

import jax
import ml_dtypes
import numpy as np

from lima_jax.errors import LimaError, namer
from lima_jax.model import ModelConfig
from lima_jax.storage.paths import Path, copy_file, is_cloud, user_path
from lima_jax.weights import gguf_vocab
from lima_jax.weights.gguf_vocab import field
from lima_jax.weights.names import interleaved_to_rotate_half, params_to_hf

ARCH = "llama"
# Hugging Face per-layer suffix <-> GGUF per-layer name (gguf.constants.TENSOR_NAMES for LLAMA).
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
_FROM_GGUF = {v: k for k, v in _TOP.items()}
_LAYER_FROM_GGUF = {v: k for k, v in _LAYER.items()}
_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(.+)")
OUTPUT_DTYPES = ("float32", "float16", "bfloat16")


def _gguf():
    import gguf  # imported on use: only GGUF conversion needs it

    return gguf


def open_reader(path: str | os.PathLike) -> Any:
    """A `gguf.GGUFReader` over a local file; a file that is not GGUF is one line naming it."""
    path = user_path(path)
    if is_cloud(path):
        raise LimaError(f"{path}: GGUF files are memory-mapped from local files; copy it to this machine first")
    if not path.is_file():
        raise LimaError(f"{path}: no such file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise LimaError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    return _parsed(os.fspath(path), os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _parsed(path: str, mtime_ns: int) -> Any:
    """The reader parses every vocabulary string into its own array (seconds for 32k tokens): a
    conversion reads the tokenizer and the weights from one parse."""
    try:
        return _gguf().GGUFReader(path)
    except (ValueError, KeyError, IndexError) as e:
        raise LimaError(f"{path}: cannot read this GGUF file ({e})") from None


def read(path: str | os.PathLike) -> tuple[ModelConfig, list[str], Callable[[str], np.ndarray]]:
    """The architecture, the Hugging Face names of the tensors held, and `get(name)` for one."""
    reader = open_reader(path)
    if int(field(reader, "split.count", 1)) > 1:
        raise LimaError(f"{path}: one part of a split GGUF; merge the parts first (llama-gguf-split --merge)")
    tensors = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:  # Llama 3.1's rotary frequency factors
        raise LimaError(f"{path}: tensor rope_freqs.weight (Llama 3.1+ rotary scaling) is not supported")
    names = {}
    for name in tensors:
        m = _GGUF_LAYER.fullmatch(name)
        if name in _FROM_GGUF:
            names[_FROM_GGUF[name]] = name
        elif m and m.group(2) in _LAYER_FROM_GGUF:
            names[f"model.layers.{m.group(1)}.{_LAYER_FROM_GGUF[m.group(2)]}"] = name
        else:
            raise LimaError(f"{path}: unknown tensor name {name}")
    cfg = config_from_gguf(reader, tensors, str(path))
    # One dtype for every tensor: the matrices' when they share a float type (llama.cpp stores norms as
    # F32 whatever the rest, widened exactly from it), else float32 (quantized or mixed files).
    kinds = _gguf().GGMLQuantizationType
    matrix_types = {t.tensor_type for t in tensors.values() if len(t.shape) > 1}
    floats = {kinds.F32: np.float32, kinds.F16: np.float16, kinds.BF16: ml_dtypes.bfloat16}
    dtype = floats[next(iter(matrix_types))] if len(matrix_types) == 1 and matrix_types <= set(floats) else np.float32

    def get(hf_name: str) -> np.ndarray:
        if hf_name not in names:
            raise LimaError(f"{path}: no tensor {hf_name}")
        w = _tensor(tensors[names[hf_name]], str(path))
        w = w.astype(dtype, copy=False)
        # llama.cpp interleaves rotary pairs (0,1), (2,3), ...; our model uses rotate-half order.
        if hf_name.endswith("q_proj.weight"):
            return interleaved_to_rotate_half(w, cfg.num_heads)
        if hf_name.endswith("k_proj.weight"):
            return interleaved_to_rotate_half(w, cfg.num_kv_heads)
        return w

    return cfg, list(names), get


def _tensor(t: Any, source: str) -> np.ndarray:
    """One tensor in numpy's (rows, columns) order: GGUF lists its dims innermost first."""
    gguf = _gguf()
    kind = gguf.GGMLQuantizationType
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    if t.tensor_type in (kind.F32, kind.F16):
        return np.asarray(t.data).reshape(shape)
    if t.tensor_type == kind.BF16:
        return np.asarray(t.data).view(ml_dtypes.bfloat16).reshape(shape)
    try:
        return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
    except NotImplementedError:
        raise LimaError(f"{source}: tensor {t.name}: type {t.tensor_type.name} cannot be dequantized by the gguf package") from None


def config_from_gguf(reader: Any, tensors: dict[str, Any], source: str) -> ModelConfig:
    """ModelConfig from the `llama.*` metadata; anything we would compute differently is an error."""
    arch = field(reader, "general.architecture")
    if arch != ARCH:
        raise LimaError(f"{source}: general.architecture {arch!r} is not supported (only {ARCH!r})")

    def key(name: str, default: Any = LimaError) -> Any:
        value = field(reader, f"{ARCH}.{name}", default)
        if value is LimaError:
            raise LimaError(f"{source}: missing key {ARCH}.{name}")
        return value

    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", "", None):
        raise LimaError(f"{source}: {ARCH}.rope.scaling.type {scaling!r} is not supported")
    if "token_embd.weight" not in tensors:
        raise LimaError(f"{source}: missing tensor token_embd.weight")
    dim, heads = int(key("embedding_length")), int(key("attention.head_count"))
    vocab = int(tensors["token_embd.weight"].shape[1])  # (dim, vocab), innermost first
    head_dim = int(key("attention.key_length", dim // heads))
    rope_dims = int(key("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise LimaError(f"{source}: {ARCH}.rope.dimension_count {rope_dims} is not the head dim {head_dim} (partial rotary is not supported)")
    eos = gguf_vocab.eos_id(reader)
    return ModelConfig(
        vocab_size=vocab,
        dim=dim,
        num_layers=int(key("block_count")),
        num_heads=heads,
        num_kv_heads=int(key("attention.head_count_kv", heads)),
        head_dim=0 if head_dim == dim // heads else head_dim,
        ffn_dim=int(key("feed_forward_length")),
        rope_theta=_float32(key("rope.freq_base", 10000.0)),
        norm_eps=_float32(key("attention.layer_norm_rms_epsilon")),
        max_len=int(key("context_length", 2048)),
        tie_embeddings="output.weight" not in tensors,
        bos_id=int(field(reader, "tokenizer.ggml.bos_token_id", 1)),
        eos_id=int(2 if eos is None else eos),  # 2: llama.cpp's default for a sentencepiece vocabulary without the key
    )


def _float32(value: float) -> float:
    """GGUF stores float32: 1e-05 reads back as 9.99999974e-06; take the shortest decimal that is
    the same float32, which is what was written."""
    return float(str(np.float32(value)))


def _to_gguf(hf_name: str, w: np.ndarray, cfg: ModelConfig) -> tuple[str, np.ndarray, Any]:
    """A Hugging Face tensor as written: its GGUF name, its data (q/k rows interleaved as llama.cpp's
    rotary reads them; norms F32, as llama.cpp keeps them in any file) and its GGML type when numpy
    cannot say it (BF16, written as its uint16 bits)."""
    if hf_name in _TOP:
        name = _TOP[hf_name]
    else:
        i, suffix = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name).groups()
        name = f"blk.{i}.{_LAYER[suffix]}"
        if suffix in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
            heads = cfg.num_heads if suffix.startswith("self_attn.q") else cfg.num_kv_heads
            w = np.ascontiguousarray(w.reshape(heads, 2, w.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(w.shape))
    if w.ndim == 1:
        return name, w.astype(np.float32), None
    if w.dtype == ml_dtypes.bfloat16:
        return name, w.view(np.uint16), _gguf().GGMLQuantizationType.BF16
    return name, w, None


def write(
    path: str | os.PathLike,
    params: dict,
    cfg: ModelConfig,
    *,
    tokenizer: str | os.PathLike | None,
    eot_id: int | None = None,
    chat_format: str = "lima",
    overwrite: bool = False,
    names: Mapping[str, str] | None = None,
) -> Path:
    """Writes one GGUF file llama.cpp and Ollama load: the weights (float32, float16 or bfloat16, as
    stored), the architecture, and the tokenizer with EOT and a chat template (`gguf_vocab.add`). Errors
    name an argument as `errors.namer(names)` does."""
    out = user_path(path)
    dtype = _checked_dtype(out, params, cfg, tokenizer, overwrite, namer(names))
    gguf = _gguf()
    if is_cloud(out):  # the writer writes local files: write here, then upload
        with tempfile.TemporaryDirectory() as tmp:
            local = write(os.path.join(tmp, out.name), params, cfg, tokenizer=tokenizer, eot_id=eot_id,
                          chat_format=chat_format)
            copy_file(local, out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / (out.name + ".partial")  # renamed once complete: no half-written model under the name
    writer = gguf.GGUFWriter(os.fspath(partial), ARCH)
    writer.add_name(out.stem)
    writer.add_file_type({"float32": gguf.LlamaFileType.ALL_F32, "float16": gguf.LlamaFileType.MOSTLY_F16,
                          "bfloat16": gguf.LlamaFileType.MOSTLY_BF16}[dtype])
    _add_architecture(writer, cfg)
    gguf_vocab.add(writer, tokenizer, cfg, eot_id=eot_id, chat_format=chat_format)

    for hf_name, w in params_to_hf(params, cfg):  # the table first, then the data, one tensor at a time
        name, w, raw = _to_gguf(hf_name, w, cfg)
        writer.add_tensor_info(name, w.shape, w.dtype, w.nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for hf_name, w in params_to_hf(params, cfg):
        writer.write_tensor_data(_to_gguf(hf_name, w, cfg)[1])
    writer.close()
    os.replace(partial, out)  # over an existing file only with --overwrite (checked above)
    return out


def _checked_dtype(out: Path, params: dict, cfg: ModelConfig, tokenizer: str | os.PathLike | None,
                   overwrite: bool, name: Callable[[str], str]) -> str:
    """The one dtype of the weights, once the model is known to be one GGUF export writes."""
    if out.exists() and not overwrite:
        raise LimaError(f"{out} already exists; choose a new output path (or pass {name('overwrite')})")
    if tokenizer is None:
        raise LimaError(f"{name('output_format')}=gguf needs the tokenizer (llama.cpp reads it from the file): "
                        f"pass {name('tokenizer')}")
    unsupported = [what for what, present in (
        (f"the {cfg.family} family", cfg.family != "llama"), ("attention biases", cfg.qkv_bias or cfg.out_bias),
        (f"{cfg.rope_scaling} rope scaling", cfg.rope_scaling != "none")) if present]
    if unsupported:  # llama.cpp names these differently (qwen2 arch, rope_freqs tensor): not written here yet
        raise LimaError(f"{name('output_format')}=gguf writes plain LLaMA models; this one has {' and '.join(unsupported)}: "
                        f"export {name('output_format')}=hf and use llama.cpp's convert_hf_to_gguf.py")
    dtypes = {np.dtype(a.dtype).name for a in jax.tree.leaves(params)}
    if not dtypes <= set(OUTPUT_DTYPES) or len(dtypes) != 1:
        raise LimaError(f"GGUF export writes float32, float16 or bfloat16 weights of one dtype, found {sorted(dtypes)}; pass {name('dtype')}")
    return dtypes.pop()


def _add_architecture(writer: Any, cfg: ModelConfig) -> None:
    hd = cfg.resolved_head_dim
    for add, value in (
        (writer.add_vocab_size, cfg.used_vocab_size), (writer.add_context_length, cfg.max_len),
        (writer.add_embedding_length, cfg.dim), (writer.add_block_count, cfg.num_layers),
        (writer.add_feed_forward_length, cfg.ffn_dim), (writer.add_head_count, cfg.num_heads),
        (writer.add_head_count_kv, cfg.num_kv_heads), (writer.add_key_length, hd), (writer.add_value_length, hd),
        (writer.add_rope_dimension_count, hd), (writer.add_rope_freq_base, cfg.rope_theta),
        (writer.add_layer_norm_rms_eps, cfg.norm_eps),
    ):
        add(value)


def extract_tokenizer(path: str | os.PathLike, folder: Path) -> Path | None:
    """Rebuilds the tokenizer the GGUF file holds as files in `folder` (None: it holds none)."""
    return gguf_vocab.extract(open_reader(path), folder, str(path))
