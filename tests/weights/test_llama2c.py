"""llama2.c's legacy `.bin` format: the pretrained stories260K model against transformers and
against llama2.c's own rotary, plus a round trip through a separate (unshared) classifier."""
from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lima_jax.weights import llama2c as llama2c_format, names as weights
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig, model_from_params, rope_frequencies, rotary
from support.paths import STORIES260K, require


def _load(path) -> tuple[ModelConfig, dict]:
    cfg, names, get = llama2c_format.read(path)
    return cfg, weights.params_from_hf(names, get, cfg, source=str(path))


def _hf_model_from(params: dict, cfg: ModelConfig):
    """A transformers LlamaForCausalLM holding `params`."""
    from support.hf_reference import hf_config, torch, transformers

    model = transformers.LlamaForCausalLM(hf_config(cfg)).eval()
    state = {name: torch.from_numpy(np.array(w)) for name, w in weights.params_to_hf(params, cfg)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if cfg.tie_embeddings else set())
    if cfg.tie_embeddings:
        assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    return model


def test_stories260k_header():
    cfg, names, _ = llama2c_format.read(require(STORIES260K))
    got = (cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size, cfg.max_len)
    assert got == (64, 172, 5, 8, 4, 512, 512)
    assert cfg.tie_embeddings and "lm_head.weight" not in names
    assert (cfg.norm_eps, cfg.rope_theta, cfg.bos_id, cfg.eos_id) == (1e-5, 10000.0, 1, 2)
    assert len(names) == 2 + 9 * 5


def test_stories260k_matches_transformers():
    from support.hf_reference import hf_logits

    cfg, params = _load(require(STORIES260K))
    tokens = np.concatenate([[1], np.random.default_rng(0).integers(3, cfg.vocab_size, 47)])[None]
    ours = np.asarray(model_from_params(cfg, params)(jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_logits(_hf_model_from(params, cfg), tokens), atol=1e-4, rtol=0)


def _raw_stories260k(path) -> dict[str, np.ndarray]:
    """The file parsed here, independently of llama2c_format: what run.c reads."""
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = np.fromfile(path, "<i4", count=7)
    hd, kv_dim = dim // n_heads, n_kv * (dim // n_heads)
    raw = np.fromfile(path, "<f4", offset=28)
    sizes = {
        "emb": vocab * dim, "rms_att": n_layers * dim, "wq": n_layers * dim * dim,
        "wk": n_layers * kv_dim * dim, "wv": n_layers * kv_dim * dim, "wo": n_layers * dim * dim,
        "rms_ffn": n_layers * dim, "w1": n_layers * hidden * dim, "w2": n_layers * hidden * dim,
        "w3": n_layers * hidden * dim, "rms_final": dim, "cos": seq_len * hd // 2, "sin": seq_len * hd // 2,
    }
    out, offset = {}, 0
    for name, n in sizes.items():
        out[name] = raw[offset : offset + n]
        offset += n
    assert offset == raw.size
    out["emb"] = out["emb"].reshape(vocab, dim)
    out["rms_att0"] = out["rms_att"][:dim]
    out["wq0"] = out["wq"][: dim * dim].reshape(dim, dim)
    out["wk0"] = out["wk"][: kv_dim * dim].reshape(kv_dim, dim)
    out["cos"], out["sin"] = out["cos"].reshape(seq_len, hd // 2), out["sin"].reshape(seq_len, hd // 2)
    return out


def test_rotary_permutation_agrees_with_llama2c():
    """llama2.c rotates adjacent pairs (q[2i], q[2i+1]) of the raw weights' output by the file's own
    freq_cis tables; our permuted weights with rotate-half must give the same rotated q and k, and
    so the same attention scores (which are blind to any within-head reordering)."""
    path = require(STORIES260K)
    raw = _raw_stories260k(path)
    cfg, params = _load(path)
    h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    layer0 = {k: np.asarray(v[0]) for k, v in params["layers"].items()}

    def llama2c_rope(x: np.ndarray, pos: int) -> np.ndarray:  # x (heads*hd,) -> (heads, hd/2, 2)
        pairs = x.reshape(-1, hd // 2, 2)
        cos, sin = raw["cos"][pos], raw["sin"][pos]
        a, b = pairs[..., 0], pairs[..., 1]
        return np.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)

    def ours_rope(w: np.ndarray, xb: np.ndarray, pos: int) -> np.ndarray:  # -> (heads, hd)
        x = jnp.einsum("d,dhk->hk", xb, w)[None, None]
        return np.asarray(rotary(x, jnp.full((1, 1), pos, jnp.int32), rope_frequencies(cfg)))[0, 0]

    for token, pos in [(1, 0), (300, 1), (57, 7), (411, 100), (5, 511)]:
        x = raw["emb"][token]
        xb = x / np.sqrt(np.mean(x * x) + 1e-5) * raw["rms_att0"]
        q_ref, k_ref = llama2c_rope(raw["wq0"] @ xb, pos), llama2c_rope(raw["wk0"] @ xb, pos)
        q, k = ours_rope(layer0["wq"], xb, pos), ours_rope(layer0["wk"], xb, pos)
        # rotate-half holds each pair i as (x[i], x[i + hd/2])
        np.testing.assert_allclose(q, q_ref.transpose(0, 2, 1).reshape(h, hd), atol=1e-5)
        np.testing.assert_allclose(k, k_ref.transpose(0, 2, 1).reshape(kv, hd), atol=1e-5)
        group = np.arange(h) // (h // kv)
        scores_ref = np.einsum("hij,hij->h", q_ref, k_ref[group])
        np.testing.assert_allclose(np.einsum("hd,hd->h", q, k[group]), scores_ref, atol=1e-5)


def test_truncated_file(tmp_path):
    path = require(STORIES260K)
    size = path.stat().st_size
    short = tmp_path / "short.bin"
    short.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(LimaError, match=f"expected {size} bytes .*found {size - 100} bytes"):
        llama2c_format.read(short)
    long = tmp_path / "long.bin"
    shutil.copy(path, long)
    with open(long, "ab") as f:
        f.write(b"\0" * 4)
    with pytest.raises(LimaError, match=f"expected {size} bytes .*found {size + 4} bytes"):
        llama2c_format.read(long)


def write_llama2c(path, state: dict[str, np.ndarray], cfg: ModelConfig) -> None:
    """Writes Hugging Face tensors as llama2.c's legacy export does (q/k back to interleaved)."""
    hd = cfg.resolved_head_dim

    def interleaved(w: np.ndarray, heads: int) -> np.ndarray:
        return w.reshape(heads, 2, hd // 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)

    def stacked(suffix: str, fn=lambda w: w) -> np.ndarray:
        return np.stack([fn(state[f"model.layers.{i}.{suffix}"]) for i in range(cfg.num_layers)])

    vocab = cfg.vocab_size if cfg.tie_embeddings else -cfg.vocab_size
    header = [cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, vocab, cfg.max_len]
    angles = np.outer(np.arange(cfg.max_len), 1.0 / 10000.0 ** (np.arange(0, hd, 2) / hd))
    parts = [
        state["model.embed_tokens.weight"],
        stacked("input_layernorm.weight"),
        stacked("self_attn.q_proj.weight", lambda w: interleaved(w, cfg.num_heads)),
        stacked("self_attn.k_proj.weight", lambda w: interleaved(w, cfg.num_kv_heads)),
        stacked("self_attn.v_proj.weight"),
        stacked("self_attn.o_proj.weight"),
        stacked("post_attention_layernorm.weight"),
        stacked("mlp.gate_proj.weight"),
        stacked("mlp.down_proj.weight"),
        stacked("mlp.up_proj.weight"),
        state["model.norm.weight"],
        np.cos(angles),
        np.sin(angles),
    ] + ([] if cfg.tie_embeddings else [state["lm_head.weight"]])
    with open(path, "wb") as f:
        f.write(np.asarray(header, "<i4").tobytes())
        for p in parts:
            f.write(np.asarray(p, "<f4").tobytes())


def test_separate_classifier_round_trip(tmp_path):
    """A negative vocab_size: the classifier follows the rotary tables and is not tied."""
    from support.hf_reference import hf_logits, hf_state, random_hf_model

    cfg = ModelConfig(
        vocab_size=97, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=96, norm_eps=1e-5, max_len=64
    )
    model = random_hf_model(cfg, seed=1)
    state = hf_state(model)
    write_llama2c(tmp_path / "model.bin", state, cfg)

    got_cfg, params = _load(tmp_path / "model.bin")
    assert not got_cfg.tie_embeddings and (got_cfg.vocab_size, got_cfg.max_len) == (97, 64)
    direct = weights.params_from_hf(list(state), state.__getitem__, cfg, source="hf")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(direct)):
        np.testing.assert_array_equal(a, b)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 9))
    ours = np.asarray(model_from_params(got_cfg, params)(jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_logits(model, tokens), atol=1e-4, rtol=0)
