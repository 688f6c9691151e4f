"""Meta's original release format as the tests write it from a Hugging Face state: interleaved q/k,
model-parallel shards of consolidated.NN.pth (torch), and params.json."""
from __future__ import annotations

import json
import pathlib

import numpy as np

from lima_jax.model import ModelConfig

# Hugging Face suffix -> (Meta suffix, model-parallel axis; None = replicated in every shard).
_LAYER = {
    "self_attn.q_proj.weight": ("attention.wq.weight", 0),
    "self_attn.k_proj.weight": ("attention.wk.weight", 0),
    "self_attn.v_proj.weight": ("attention.wv.weight", 0),
    "self_attn.o_proj.weight": ("attention.wo.weight", 1),
    "mlp.gate_proj.weight": ("feed_forward.w1.weight", 0),
    "mlp.up_proj.weight": ("feed_forward.w3.weight", 0),
    "mlp.down_proj.weight": ("feed_forward.w2.weight", 1),
    "input_layernorm.weight": ("attention_norm.weight", None),
    "post_attention_layernorm.weight": ("ffn_norm.weight", None),
}


def _rotate_half_to_interleaved(w: np.ndarray, num_heads: int) -> np.ndarray:
    rows, cols = w.shape
    dh = rows // num_heads
    return w.reshape(num_heads, 2, dh // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def write_meta_folder(
    hf_state: dict[str, np.ndarray],
    cfg: ModelConfig,
    out_dir,
    num_shards: int,
    *,
    vocab_parallel: bool = False,
    dtype=None,
) -> pathlib.Path:
    """Writes `hf_state` as Meta's release does: interleaved q/k, split into model-parallel shards.

    `vocab_parallel` gives LLaMA-3's layout (embedding split by vocabulary rows, a real vocab_size
    and rope_theta in params.json); otherwise LLaMA-1/2's (embedding split by columns, vocab -1).
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, tuple[np.ndarray, int | None]] = {
        "tok_embeddings.weight": (hf_state["model.embed_tokens.weight"], 0 if vocab_parallel else 1),
        "norm.weight": (hf_state["model.norm.weight"], None),
        "output.weight": (hf_state["lm_head.weight"], 0),
    }
    for i in range(cfg.num_layers):
        for hf_suffix, (meta_suffix, axis) in _LAYER.items():
            w = hf_state[f"model.layers.{i}.{hf_suffix}"]
            if hf_suffix == "self_attn.q_proj.weight":
                w = _rotate_half_to_interleaved(w, cfg.num_heads)
            elif hf_suffix == "self_attn.k_proj.weight":
                w = _rotate_half_to_interleaved(w, cfg.num_kv_heads)
            meta[f"layers.{i}.{meta_suffix}"] = (w, axis)
    rope = np.arange(cfg.resolved_head_dim // 2, dtype=np.float32)  # LLaMA-1 ships this buffer; ignored
    for k in range(num_shards):
        shard = {"rope.freqs": torch.from_numpy(rope)}
        for name, (w, axis) in meta.items():
            piece = w if axis is None else np.array_split(w, num_shards, axis=axis)[k]
            # clone: a saved view would drag the whole underlying storage into the file
            shard[name] = torch.from_numpy(np.ascontiguousarray(piece)).to(dtype).clone()
        torch.save(shard, out / f"consolidated.{k:02d}.pth")
    params = {"dim": cfg.dim, "n_layers": cfg.num_layers, "n_heads": cfg.num_heads, "norm_eps": cfg.norm_eps}
    if cfg.num_kv_heads != cfg.num_heads:
        params["n_kv_heads"] = cfg.num_kv_heads
    if vocab_parallel:  # LLaMA-3's params.json; the formula would give 256 here, not ffn_dim
        params |= {"vocab_size": cfg.vocab_size, "multiple_of": 1024, "ffn_dim_multiplier": 1.3}
        params["rope_theta"] = cfg.rope_theta
    else:  # LLaMA-1's: the vocabulary is left to the tokenizer; the formula would give 256
        params |= {"vocab_size": -1, "multiple_of": 256}
    (out / "params.json").write_text(json.dumps(params))
    return out
