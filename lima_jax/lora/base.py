"""The frozen base of a LoRA run, stored as `lora.base_dtype` says: as the checkpoint holds it, cast to
float32 or bfloat16, or (QLoRA) with every layer's seven projection matrices quantized to int8 or NF4
per block of 64 and the rest (embeddings, norms) in bfloat16. The adapters train against it, and a
reader of the run rebuilds it the same way, so merged weights are the ones the adapters saw."""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lima_jax.lora import quantize
from lima_jax.model import ModelConfig, param_shardings

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


def placement(params: Any, base_dtype: str, cfg: ModelConfig, mesh: Mesh) -> Any:
    """Where each leaf of `frozen(params, base_dtype)` lives on `mesh` (`params`: arrays or shapes): a cast
    leaf where its parameter does; a quantized matrix's codes and scales split over `fsdp` on the block axis
    when it divides (contiguous blocks: the weight's first axis cut in pieces, gathered per layer as FSDP
    gathers a weight), else replicated. The trainer and `aot` place the base alike."""
    fsdp = mesh.shape["fsdp"]

    def place(leaf: Any, where: NamedSharding) -> Any:
        if not isinstance(leaf, quantize.Quantized):
            return where
        lead = leaf.codes.ndim - 2  # the stacked layer axis
        axis = "fsdp" if leaf.scales.shape[-1] % fsdp == 0 else None
        return quantize.Quantized(NamedSharding(mesh, P(*[None] * lead, axis, None)),
                                  NamedSharding(mesh, P(*[None] * lead, axis)), leaf.kind, leaf.shape)

    held = jax.eval_shape(functools.partial(frozen, base_dtype=base_dtype), params)
    return jax.tree.map(place, held, param_shardings(cfg, mesh), is_leaf=lambda x: isinstance(x, quantize.Quantized))
