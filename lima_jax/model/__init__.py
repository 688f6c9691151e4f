"""The model layer: the LLaMA network and what it is built from. It imports no stage.

  config.py         ModelConfig (no JAX): the architecture, its validation, its parameter count
  llama.py          the network: Block (one layer, stacked for lax.scan) and Llama

Importing this package loads no JAX: configs read `ModelConfig` from here before a command pays for
JAX, so the network's names load their module on first use (PEP 562's module `__getattr__`).
"""
from __future__ import annotations

import importlib
from typing import Any

from lima_jax.model.config import ModelConfig, param_count

# The network's public names, each with the module that defines it.
_DEFINED_IN = {
    "Block": "llama",
    "KVCache": "llama",
    "Llama": "llama",
    "abstract_model": "llama",
    "dropout_rates": "llama",
    "logical_axes": "llama",
    "model_from_params": "llama",
    "param_shardings": "llama",
    "project": "llama",
    "rope_frequencies": "llama",
    "rotary": "llama",
}

__all__ = ["ModelConfig", "param_count", *_DEFINED_IN]


def __getattr__(name: str) -> Any:
    if name not in _DEFINED_IN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_DEFINED_IN[name]}"), name)
