"""The model layer: the LLaMA network and what it is built from. It imports no stage.

  config.py         ModelConfig (no JAX): the architecture, its validation, its parameter count
  layers.py         RMSNorm, rotary embeddings, residual dropout, `project` (the hook LoRA plugs into)
  attention.py      causal, segment-aware attention: the XLA path and training's kernels (splash, cudnn)
  kv_cache.py       KVCache, what decoding writes keys and values into
  llama.py          the network: Block (one layer; all of them stacked, run under lax.scan) and Llama
  params.py         the parameters as data: abstract shapes, logical axes, shardings, a model from arrays
  decode_layout.py  the trained model held for fast decoding (per-layer arrays, fused projections)
  flops.py          model FLOPs per token and device peaks, for MFU

Importing this package loads no JAX: configs read `ModelConfig` from here before a command pays for
JAX, so the network's names load their module on first use (PEP 562's module `__getattr__`).
"""
from __future__ import annotations

import importlib
from typing import Any

from lima_jax.model.config import ModelConfig, param_count

# The network's public names, each with the module that defines it.
_DEFINED_IN = {
    "Llama": "llama",
    "KVCache": "kv_cache",
    "dropout_rates": "layers",
    "project": "layers",
    "rope_frequencies": "layers",
    "rotary": "layers",
    "abstract_model": "params",
    "logical_axes": "params",
    "model_from_params": "params",
    "param_shardings": "params",
}

__all__ = ["ModelConfig", "param_count", *_DEFINED_IN]


def __getattr__(name: str) -> Any:
    if name not in _DEFINED_IN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_DEFINED_IN[name]}"), name)
