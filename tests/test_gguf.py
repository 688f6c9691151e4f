"""GGUF in and out: files written here with the `gguf` package's own writer (as llama.cpp's
convert_hf_to_gguf lays them out) import to transformers' logits, quantized tensors to exactly what
`gguf` dequantizes; our export reads back with `gguf.GGUFReader` with the tensors, metadata,
tokenizer and EOT llama.cpp expects, and imports again to the same logits."""
import gguf
import jax
import jinja2
import numpy as np
import pytest
from hf_reference import hf_logits, hf_state, random_hf_model, torch, transformers

from conftest import LLAMA_TOKENIZER, require
from lima_jax.data import text_tokenizers
from lima_jax.data.tokenizer import NEW_EOT, ChatTokenizer
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig, model_from_params
from lima_jax.weights import checkpoint
from lima_jax.weights.convert import convert
from lima_jax.weights.names import params_from_hf

Q = gguf.GGMLQuantizationType
CFG = ModelConfig(vocab_size=97, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=96, max_len=64, norm_eps=1e-5)
# K-quants pack 256 values per block: every matrix's rows must hold whole blocks.
WIDE = CFG.replace(dim=256, ffn_dim=256, num_heads=4, num_kv_heads=2)
# The types `gguf.quants.quantize` writes, and those it only reads (filled here with random blocks).
QUANTIZABLE = (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)
K_QUANTS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}  # fp16 scale offsets
GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
    "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
    "post_attention_layernorm.weight": "ffn_norm", "mlp.gate_proj.weight": "ffn_gate",
    "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down",
}


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: rotate-half rows -> interleaved rotary pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm", "lm_head.weight": "output"}
    if hf_name in top:
        return top[hf_name] + ".weight"
    _, _, i, suffix = hf_name.split(".", 3)
    return f"blk.{i}.{GGUF_LAYER[suffix]}.weight"


def random_k_blocks(w: np.ndarray, qtype, rng) -> np.ndarray:
    """Random blocks of a K-quant (no quantizer in `gguf`), with small finite fp16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (w.shape[0], w.shape[1] // block, size), dtype=np.uint8)
    for offset in K_QUANTS[qtype]:
        raw[..., offset : offset + 2] = rng.uniform(0.001, 0.01, raw.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(w.shape[0], -1)


def write_gguf(path, state: dict, cfg: ModelConfig, types: list | None = None, seed: int = 0) -> tuple[dict, dict]:
    """Writes `state` as llama.cpp's converter does (matrices cycling through `types`, norms F32);
    returns the Hugging Face state the file holds once dequantized, and each tensor's type."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.ffn_dim)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_rope_dimension_count(cfg.resolved_head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_bos_token_id(cfg.bos_id)
    writer.add_eos_token_id(cfg.eos_id)
    held, written, n = {}, {}, 0
    for name, w in state.items():
        if name.endswith("q_proj.weight"):
            w = llama_cpp_permute(w, cfg.num_heads)
        elif name.endswith("k_proj.weight"):
            w = llama_cpp_permute(w, cfg.num_kv_heads)
        qtype = Q.F32 if w.ndim == 1 or not types else types[n % len(types)]
        n += w.ndim == 2
        if qtype in K_QUANTS:
            data = random_k_blocks(w, qtype, rng)
        elif qtype == Q.BF16:
            data = gguf.quants.quantize(w, qtype)
        else:
            data = gguf.quants.quantize(w, qtype) if qtype != Q.F32 else w
        writer.add_tensor(gguf_name(name), data, raw_dtype=qtype if data.dtype == np.uint8 else None)
        dequantized = gguf.quants.dequantize(data, qtype).reshape(w.shape).astype(np.float32)
        if name.endswith(("q_proj.weight", "k_proj.weight")):  # back to rotate-half, as transformers holds it
            heads = cfg.num_heads if "q_proj" in name else cfg.num_kv_heads
            dequantized = dequantized.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
        held[name], written[name] = dequantized, qtype
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held, written


def hf_model_with(state: dict, cfg: ModelConfig):
    model = random_hf_model(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model


def check_import(path, tmp_path, held: dict, cfg: ModelConfig, atol: float) -> None:
    ckpt = convert(path, tmp_path / "ckpt")
    got_cfg, params = checkpoint.load_params(ckpt)
    assert got_cfg == cfg
    expected = params_from_hf(list(held), held.__getitem__, cfg, source="reference")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), b)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 9))
    ours = np.asarray(model_from_params(got_cfg, params)(tokens))
    np.testing.assert_allclose(ours, hf_logits(hf_model_with(held, cfg), tokens), atol=atol, rtol=0)


def test_f32_gguf_imports_to_transformers_logits(tmp_path):
    state = hf_state(random_hf_model(CFG))
    held, _ = write_gguf(tmp_path / "m.gguf", state, CFG)
    assert all(np.array_equal(held[k], state[k]) for k in state)  # F32: what is held is the model itself
    check_import(tmp_path / "m.gguf", tmp_path, held, CFG, atol=1e-4)


def test_quantized_gguf_imports_to_what_gguf_dequantizes(tmp_path):
    """Every matrix in another type: the writable ones quantized from the model (so within their
    rounding of it), the K-quants random blocks; the import must be gguf's dequantization exactly."""
    model = random_hf_model(WIDE)
    state = hf_state(model)
    types = [Q.F16, Q.BF16, *QUANTIZABLE, *K_QUANTS]
    held, written = write_gguf(tmp_path / "m.gguf", state, WIDE, types)
    assert set(written.values()) == {Q.F32, *types}
    # Quantized, not replaced: within Q8_0's half step and Q4_0's (clipped) step of each 32-block's
    # scale, plus the rounding of that scale to float16.
    for name, qtype in written.items():
        if qtype in (Q.Q8_0, Q.Q4_0):
            w = state[name].reshape(-1, 32)
            bound = np.abs(w).max(-1, keepdims=True) * ((0.5 / 127 if qtype == Q.Q8_0 else 1 / 8) + 2**-11)
            assert (np.abs(held[name].reshape(-1, 32) - w) <= bound).all(), name
    check_import(tmp_path / "m.gguf", tmp_path, held, WIDE, atol=1e-3)  # logits of up to ~5 over dim 256
