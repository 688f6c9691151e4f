"""Hugging Face LLaMA folders: config.json plus safetensors (one file, or shards with an index).

Reading memory-maps each safetensors file and hands out one tensor at a time; writing streams
tensors into shards of at most `max_shard_bytes`, as `save_pretrained` lays them out, locally or to
`gs://`.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save, save_file

from lima_jax.data.tokenizer import ChatTokenizer
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig
from lima_jax.storage.paths import Path, is_cloud, user_path
from lima_jax.weights import hf_chat
from lima_jax.weights.names import params_to_hf, stored_layers

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"


# model_type -> the class transformers builds for it. All three are LLaMA's decoder; they differ in
# which attention biases they have (Qwen2: q/k/v; LLaMA: all four with attention_bias; Mistral: none).
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# The config's sizes and counts; the optional ones may be null (then they take their default).
_OPTIONAL_COUNTS = ("num_key_value_heads", "head_dim", "max_position_embeddings")
_COUNTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", *_OPTIONAL_COUNTS)
# Llama 3.1's rope_parameters -> ModelConfig fields.
_LLAMA3_ROPE = {
    "factor": "rope_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_max_len",
}


def config_from_hf(hf: dict[str, Any], source: str = CONFIG) -> ModelConfig:
    """ModelConfig from a LLaMA, Mistral or Qwen2 config.json; anything we would compute differently
    is an error."""
    family = hf.get("model_type", "llama")
    if family not in ARCHITECTURES:
        raise LimaError(f"{source}: model_type {family!r} is not supported (one of {', '.join(ARCHITECTURES)})")
    if hf.get("mlp_bias"):
        raise LimaError(f"{source}: mlp_bias=true is not supported (LLaMA's MLP has no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise LimaError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (LLaMA uses silu)")
    for key in _COUNTS:
        if key in hf and not (hf[key] is None and key in _OPTIONAL_COUNTS) and not _positive_int(hf[key]):
            raise LimaError(f"{source}: {key} is {json.dumps(hf[key])}; it must be a positive integer")
    try:
        dim, heads = hf["hidden_size"], hf["num_attention_heads"]
        eos = hf.get("eos_token_id", 2)
        max_len = hf.get("max_position_embeddings", 2048)
        _check_window(hf, family, max_len, source)
        attention_bias = bool(hf.get("attention_bias", False)) if family == "llama" else family == "qwen2"
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            dim=dim,
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=0 if hf.get("head_dim") in (None, dim // heads) else hf["head_dim"],
            ffn_dim=hf["intermediate_size"],
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_len=max_len,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_id=hf.get("bos_token_id", 1) if hf.get("bos_token_id") is not None else 1,
            eos_id=(eos[0] if isinstance(eos, list) else eos) if eos is not None else 2,
            qkv_bias=attention_bias,
            out_bias=attention_bias and family == "llama",
            family=family,
            **_rope_from_hf(hf, source),
        )
    except KeyError as e:
        raise LimaError(f"{source}: missing key {e.args[0]}") from None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _rope_from_hf(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """The rotary fields of ModelConfig. rope_theta sits at the top level (transformers 4) or in
    rope_parameters (transformers 5); Llama 3.1's scaling is in either rope_scaling or rope_parameters."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    if rope_type not in ("default", "llama3"):
        raise LimaError(f"{source}: rope scaling type {rope_type!r} is not supported (only Llama 3.1's \"llama3\")")
    if float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise LimaError(f"{source}: partial_rotary_factor {rope.get('partial_rotary_factor', hf.get('partial_rotary_factor'))} is not supported (rotary on every dim)")
    fields: dict[str, Any] = {"rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))}
    if rope_type == "llama3":
        fields["rope_scaling"] = "llama3"
        for key, field in _LLAMA3_ROPE.items():
            if key not in rope:
                raise LimaError(f"{source}: missing key {key} in the llama3 rope scaling")
            fields[field] = type(getattr(ModelConfig, field))(rope[key])
    return fields


def _check_window(hf: dict[str, Any], family: str, max_len: int, source: str) -> None:
    """Sliding-window attention is not implemented: a window that never slides (null, or at least
    max_position_embeddings) is full attention; a shorter one is refused."""
    window = hf.get("sliding_window")
    if family == "qwen2" and not hf.get("use_sliding_window", False):
        return  # Qwen2 applies its window only when use_sliding_window is true
    if family in ("mistral", "qwen2") and window is not None and window < max_len:
        raise LimaError(
            f"{source}: sliding_window {window} is shorter than max_position_embeddings {max_len}; sliding-window "
            f"attention is not supported (set max_position_embeddings to {window} to use the model within its window)"
        )


def check_family(cfg: ModelConfig) -> None:
    """The attention biases `cfg` has are those of its Hugging Face architecture."""
    expected = {"llama": (cfg.qkv_bias, cfg.qkv_bias), "mistral": (False, False), "qwen2": (True, False)}
    if cfg.family not in expected:
        raise LimaError(f"model family {cfg.family!r}: not one of {', '.join(ARCHITECTURES)}")
    if (cfg.qkv_bias, cfg.out_bias) != expected[cfg.family]:
        raise LimaError(
            f"model family {cfg.family}: qkv_bias={cfg.qkv_bias} and out_bias={cfg.out_bias} is not an "
            f"architecture {ARCHITECTURES[cfg.family]} has"
        )


def config_to_hf(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
    """config.json for `cfg`'s architecture (LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM)."""
    check_family(cfg)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": cfg.rope_theta,
                **{key: getattr(cfg, field) for key, field in _LLAMA3_ROPE.items()}}
    per_family = {
        "llama": {"attention_bias": cfg.qkv_bias, "mlp_bias": False},
        "mistral": {"sliding_window": None},
        "qwen2": {"use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.num_layers},
    }[cfg.family]
    return {
        "architectures": [ARCHITECTURES[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.used_vocab_size,  # the padding rows are not exported (names.params_to_hf)
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers 4 reads it here,
        "rope_parameters": rope,  # transformers 5 here
        **({"rope_scaling": rope} if cfg.rope_scaling != "none" else {}),
        "tie_word_embeddings": cfg.tie_embeddings,
        **per_family,
        "bos_token_id": cfg.bos_id,
        "eos_token_id": cfg.eos_id,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def read(path: str | os.PathLike) -> tuple[ModelConfig, list[str], Callable[[str], np.ndarray]]:
    """The architecture, the tensor names, and a loader for one tensor of a Hugging Face folder."""
    folder = pathlib.Path(path)
    config_file = folder / CONFIG
    if not config_file.is_file():
        raise LimaError(f"{config_file}: missing file (a Hugging Face folder needs config.json)")
    try:
        cfg = config_from_hf(json.loads(config_file.read_text()), str(config_file))
    except json.JSONDecodeError as e:
        raise LimaError(f"{config_file}:{e.lineno}: not valid JSON ({e.msg})") from None

    index_file = folder / INDEX
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            raise LimaError(f"{folder}: missing file model.safetensors (no *.safetensors, no {INDEX})")
    for name in files:
        if not (folder / name).is_file():
            raise LimaError(f"{folder / name}: missing file (listed in {INDEX})")
    handles = {name: safe_open(folder / name, framework="numpy") for name in files}
    where = {key: name for name, h in handles.items() for key in h.keys()}
    layers = stored_layers(where)
    if layers != cfg.num_layers:
        held = f"{layers} layers" + (f" (model.layers.0 to model.layers.{layers - 1})" if layers else "")
        raise LimaError(f"{config_file}: num_hidden_layers is {cfg.num_layers}, but the safetensors in {folder} hold {held}")

    def get(key: str) -> np.ndarray:
        return handles[where[key]].get_tensor(key)

    return cfg, list(where), get


def write(
    path: str | os.PathLike,
    params: dict,
    cfg: ModelConfig,
    *,
    tokenizer: ChatTokenizer | None = None,
    eot_id: int | None = None,
    max_shard_bytes: int = 5 * 2**30,
    overwrite: bool = False,
) -> Path:
    """Writes a folder that `transformers.AutoModelForCausalLM.from_pretrained` loads, with the
    tokenizer, chat template and stop tokens of a model fine-tuned with EOT `eot_id` (`hf_chat`)."""
    folder = user_path(path)
    if folder.exists() and not overwrite:  # with it, nothing is deleted here (weights/output.py)
        raise LimaError(f"{folder} already exists; choose a new output path (or pass overwrite=True)")
    folder.mkdir(parents=True, exist_ok=True)

    written: list[tuple[str, list[str], int]] = []  # (temporary file, tensor names, bytes)
    current: dict[str, np.ndarray] = {}
    size, dtype = 0, None
    for name, tensor in params_to_hf(params, cfg):
        dtype = dtype or np.dtype(tensor.dtype).name
        if current and size + tensor.nbytes > max_shard_bytes:
            written.append(_flush(folder, current, len(written)))
            current, size = {}, 0
        current[name] = tensor
        size += tensor.nbytes
    written.append(_flush(folder, current, len(written)))

    # Name shards model-0000i-of-0000n only once n is known, as save_pretrained does.
    n = len(written)
    weight_map, total = {}, 0
    for i, (tmp, keys, nbytes) in enumerate(written):
        final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        if is_cloud(folder):  # no rename there: a server-side copy (gcsfs's rename tries a move API first, which
            (folder / tmp).copy(folder / final)  # not every endpoint has, and retries its refusal for half a minute)
            (folder / tmp).unlink()
        else:
            (folder / tmp).rename(folder / final)
        weight_map.update({k: final for k in keys})
        total += nbytes
    if n > 1:
        (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / CONFIG).write_text(json.dumps(config_to_hf(cfg, dtype or "float32"), indent=2))
    (folder / hf_chat.GENERATION_CONFIG).write_text(json.dumps(hf_chat.generation_config(cfg, eot_id), indent=2))
    if tokenizer is not None:
        hf_chat.write_tokenizer(folder, tokenizer, eot_id, cfg)
    return folder


def _flush(folder: Path, shard: dict[str, np.ndarray], i: int) -> tuple[str, list[str], int]:
    name = f"shard-{i}.safetensors.tmp"
    if is_cloud(folder):  # safetensors writes local files only: upload the shard's bytes
        (folder / name).write_bytes(save(shard, metadata={"format": "pt"}))
    else:
        # safetensors 0.8 renames a temporary file created 0600 into place (safetensors#782): the mode an
        # ordinary new file gets (the umask's, as config.json's) is read from one made first, then restored.
        path = str(folder / name)
        open(path, "wb").close()
        mode = os.stat(path).st_mode & 0o777
        save_file(shard, path, metadata={"format": "pt"})
        os.chmod(path, mode)
    return name, list(shard), sum(t.nbytes for t in shard.values())
