"""The frozen base of a LoRA run, stored as `lora.base_dtype` says: as the checkpoint holds it, cast to
float32 or bfloat16, or (QLoRA) with every layer's seven projection matrices quantized to int8 or NF4
per block of 64 and the rest (embeddings, norms) in bfloat16. The adapters train against it, and a
reader of the run rebuilds it the same way, so merged weights are the ones the adapters saw."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lima_jax.lora import quantize

PROJECTIONS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def frozen(params: dict, base_dtype: str) -> dict:
    """`params` (the base, laid out for the run's vocabulary) as the run holds it fixed."""
    if not base_dtype:
        return params
    if base_dtype not in quantize.QUANTIZED:
        return jax.tree.map(lambda a: a.astype(base_dtype), params)
    narrow = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    layers = {name: quantize.quantize(params["layers"][name], base_dtype) if name in PROJECTIONS else w
              for name, w in narrow["layers"].items()}
    return dict(narrow, layers=layers)


def nbytes(tree: dict) -> int:
    """The bytes a (frozen or trainable) tree holds."""
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))
