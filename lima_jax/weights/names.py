"""The one mapping between Hugging Face tensor names/layouts and lima_jax's parameter tree.

Every importer (Hugging Face, Meta, llama2.c) yields tensors under Hugging Face names in Hugging
Face's layout (torch `Linear` weights are (out, in), rotary in rotate-half order); this module turns
them into the model's stacked tree and back, one tensor at a time so that a 65B model never needs
more than one copy of its weights in host memory.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator

import numpy as np

from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig

Params = dict  # {'embed', 'layers': {...}, 'norm', 'lm_head'?} of numpy arrays

# Per layer: Hugging Face name suffix -> our key under params['layers'].
_LAYER = {
    "input_layernorm.weight": "attn_norm",
    "self_attn.q_proj.weight": "wq",
    "self_attn.k_proj.weight": "wk",
    "self_attn.v_proj.weight": "wv",
    "self_attn.o_proj.weight": "wo",
    "post_attention_layernorm.weight": "mlp_norm",
    "mlp.gate_proj.weight": "w_gate",
    "mlp.up_proj.weight": "w_up",
    "mlp.down_proj.weight": "w_down",
}
# The biases of the architectures that have them (Qwen2: q/k/v; LLaMA's attention_bias: all four).
_QKV_BIAS = {"self_attn.q_proj.bias": "bq", "self_attn.k_proj.bias": "bk", "self_attn.v_proj.bias": "bv"}
_OUT_BIAS = {"self_attn.o_proj.bias": "bo"}
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.")
# Buffers some checkpoints carry that hold no learned weights.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def layer_tensors(cfg: ModelConfig) -> dict[str, str]:
    """Per layer: Hugging Face name suffix -> our key, for the tensors `cfg`'s architecture has."""
    return {**_LAYER, **(_QKV_BIAS if cfg.qkv_bias else {}), **(_OUT_BIAS if cfg.out_bias else {})}


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The Hugging Face shape of every per-layer tensor (by suffix) and every top-level tensor."""
    d, f, dh = cfg.dim, cfg.ffn_dim, cfg.resolved_head_dim
    q, kv = cfg.num_heads * dh, cfg.num_kv_heads * dh
    shapes = {
        "input_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (q, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, q),
        "post_attention_layernorm.weight": (d,),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.bias": (d,),
        "model.embed_tokens.weight": (cfg.vocab_size, d),
        "model.norm.weight": (d,),
    }
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


def _to_ours(key: str, w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """One layer's tensor from Hugging Face (out, in) layout to ours."""
    dh = cfg.resolved_head_dim
    if key in ("attn_norm", "mlp_norm", "bo"):
        return w
    if key == "bq":
        return w.reshape(cfg.num_heads, dh)
    if key in ("bk", "bv"):
        return w.reshape(cfg.num_kv_heads, dh)
    if key == "wq":
        return w.T.reshape(cfg.dim, cfg.num_heads, dh)
    if key in ("wk", "wv"):
        return w.T.reshape(cfg.dim, cfg.num_kv_heads, dh)
    if key == "wo":
        return w.T.reshape(cfg.num_heads, dh, cfg.dim)
    return w.T  # w_gate, w_up (D, F); w_down (F, D)


def layer_to_hf(key: str, w: np.ndarray) -> np.ndarray:
    """One layer's tensor (our key) in Hugging Face's layout: matrices (out, in), the contracted
    dimensions of ours flattened into `in` and the rest into `out` (a LoRA pair converts the same way)."""
    if key in ("attn_norm", "mlp_norm", "bo"):
        return w
    if key in ("bq", "bk", "bv"):
        return np.ascontiguousarray(w.reshape(-1))
    if key in ("wq", "wk", "wv"):
        return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)
    if key == "wo":
        return np.ascontiguousarray(w.reshape(-1, w.shape[-1]).T)
    return np.ascontiguousarray(w.T)


def _check(name: str, w: np.ndarray, expected: tuple[int, ...]) -> None:
    if tuple(w.shape) != tuple(expected):
        raise LimaError(f"tensor {name}: expected shape {tuple(expected)}, found {tuple(w.shape)}")


def params_from_hf(
    names: list[str], get: Callable[[str], np.ndarray], cfg: ModelConfig, source: str
) -> Params:
    """Builds the stacked parameter tree from tensors under Hugging Face names.

    `names` is every tensor the source holds (an unknown one is an error, a missing one too);
    `get(name)` loads one tensor. Each layer's slice is copied into a preallocated stacked array,
    so at most one copy of the weights is resident.
    """
    stored = stored_layers(names)
    if stored != cfg.num_layers:  # first: a huge count must not become a huge set of expected names
        raise LimaError(f"{source}: the model config has {cfg.num_layers} layers, the tensors {stored}")
    shapes = hf_shapes(cfg)
    expected = {"model.embed_tokens.weight", "model.norm.weight"} | (
        set() if cfg.tie_embeddings else {"lm_head.weight"}
    )
    per_layer = layer_tensors(cfg)
    expected |= {f"model.layers.{i}.{s}" for i in range(cfg.num_layers) for s in per_layer}
    present = {n for n in names if not n.endswith(_IGNORED_SUFFIXES)}
    if cfg.tie_embeddings:
        present.discard("lm_head.weight")  # some tied checkpoints still store the copy
    unknown = sorted(present - expected)
    if unknown:
        raise LimaError(f"{source}: unknown tensor name {unknown[0]}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    missing = sorted(expected - present, key=natural_key)
    if missing:
        raise LimaError(f"{source}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    def top(name: str) -> np.ndarray:
        w = get(name)
        _check(name, w, shapes[name])
        return np.asarray(w)

    params: Params = {"embed": top("model.embed_tokens.weight"), "norm": top("model.norm.weight")}
    if not cfg.tie_embeddings:
        params["lm_head"] = np.ascontiguousarray(top("lm_head.weight").T)
    layers: dict[str, np.ndarray] = {}
    for i in range(cfg.num_layers):
        for suffix, key in per_layer.items():
            name = f"model.layers.{i}.{suffix}"
            w = get(name)
            _check(name, w, shapes[suffix])
            w = _to_ours(key, np.asarray(w), cfg)
            if key not in layers:
                layers[key] = np.empty((cfg.num_layers, *w.shape), w.dtype)
            layers[key][i] = w
    params["layers"] = layers
    return params


def stored_layers(names: Iterable[str]) -> int:
    """How many layers tensors under Hugging Face names hold: one past the highest `model.layers.<i>`."""
    found = [int(m.group(1)) for m in map(_LAYER_NAME.match, names) if m]
    return max(found) + 1 if found else 0


def params_to_hf(params: Params, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (Hugging Face name, tensor) pairs, one tensor at a time. Vocabulary padding rows stay
    behind: other runtimes do not mask them, so an exported model has exactly its tokens' rows."""
    used = cfg.used_vocab_size
    yield "model.embed_tokens.weight", np.asarray(params["embed"])[:used]
    for i in range(cfg.num_layers):
        for suffix, key in layer_tensors(cfg).items():
            yield f"model.layers.{i}.{suffix}", layer_to_hf(key, np.asarray(params["layers"][key][i]))
    yield "model.norm.weight", np.asarray(params["norm"])
    if not cfg.tie_embeddings:
        yield "lm_head.weight", np.ascontiguousarray(np.asarray(params["lm_head"])[:, :used].T)


def interleaved_to_rotate_half(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Meta's q/k weights pair rotary dimensions as (0,1), (2,3), ...; Hugging Face's as (i, i+Dh/2).

    Rows of w (num_heads*Dh, D) are reordered within each head: evens first, then odds.
    """
    rows, cols = w.shape
    dh = rows // num_heads
    return w.reshape(num_heads, dh // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in name.replace(".", " ").split()]
