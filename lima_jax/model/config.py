"""The model's architecture as data: `ModelConfig` and the counts that follow from it alone.

It imports no JAX, so configs (`configs/*.py`, `lima_jax.recipe`) load and are checked before a
command pays for JAX; `lima_jax.model` builds the network from it.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from lima_jax.errors import LimaError

REMAT_POLICIES = ("none", "full", "save_dots", "save_attention")
DTYPES = ("float32", "bfloat16", "float16")
ROPE_SCALINGS = ("none", "llama3")
FAMILIES = ("llama", "mistral", "qwen2")  # Hugging Face model_type values
# Training's attention kernels (`attention.py` runs them) and the shapes each takes.
ATTENTION_IMPLS = ("auto", "xla", "splash", "cudnn")
SPLASH_MULTIPLE = 128  # splash tiles the sequence and the head dim by 128 lanes
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture, plus how it is computed (dtypes, scan, remat) and regularised (dropout)."""

    vocab_size: int = 32000  # embedding rows and output columns, padding included
    vocab_padding: int = 0  # rows past the real vocabulary, so the vocab axis shards; never emitted
    dim: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 0  # 0 means dim // num_heads
    ffn_dim: int = 11008
    rope_theta: float = 10000.0
    # Llama 3.1's rotary frequency scaling ("llama3" in Hugging Face's rope_parameters) when
    # rope_scaling is "llama3"; the four numbers are its parameters (3.1's values by default).
    rope_scaling: str = "none"  # none | llama3
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2; LLaMA's attention_bias)
    out_bias: bool = False  # a bias on the attention output projection (LLaMA's attention_bias only)
    family: str = "llama"  # the Hugging Face architecture it reads from and exports to: FAMILIES
    norm_eps: float = 1e-6
    max_len: int = 2048
    tie_embeddings: bool = False
    bos_id: int = 1
    eos_id: int = 2
    residual_dropout: float = 0.2  # the rate at the top layer; 0.0 at the bottom, linear between
    scan_layers: bool = True
    # Decoding runs the layers under one lax.scan over the stacked weights and a stacked (L, ...)
    # KV cache: compile time flat in depth, at some cost per step on a CPU (see bench/decode.py).
    decode_scan: bool = False
    remat: str = "none"  # none | full | save_dots (keep matmul outputs) | save_attention (keep q, k, v, attention out)
    attention: str = "auto"  # training's kernel: auto | xla | splash (TPU) | cudnn (GPU); see attention.py
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; norms, softmax and logits stay in float32
    init_std: float = 0.02

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.dim // self.num_heads

    @property
    def used_vocab_size(self) -> int:
        """The token ids the model reads and emits: 0 .. used_vocab_size - 1."""
        return self.vocab_size - self.vocab_padding

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LimaError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**values)


def param_count(cfg: ModelConfig) -> int:
    """The number of parameters, from the config alone."""
    d, f, kv_dim = cfg.dim, cfg.ffn_dim, cfg.num_kv_heads * cfg.resolved_head_dim
    q_dim = cfg.num_heads * cfg.resolved_head_dim
    per_layer = 2 * d + d * q_dim + 2 * d * kv_dim + q_dim * d + 3 * d * f
    per_layer += (q_dim + 2 * kv_dim) * cfg.qkv_bias + d * cfg.out_bias
    heads = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return cfg.num_layers * per_layer + heads + d


def unsupported(impl: str, seq_len: int, head_dim: int, dtype: str) -> str | None:
    """Why attention kernel `impl` cannot run these shapes (one line), or None when it can."""
    if impl == "splash" and (seq_len % SPLASH_MULTIPLE or head_dim % SPLASH_MULTIPLE):
        return (f"model.attention=splash needs the sequence length and head dim to be multiples of "
                f"{SPLASH_MULTIPLE}, got {seq_len} and {head_dim}")
    if impl == "cudnn" and (dtype not in CUDNN_DTYPES or head_dim > CUDNN_MAX_HEAD_DIM or head_dim % 8):
        return (f"model.attention=cudnn needs model.dtype in {', '.join(CUDNN_DTYPES)} and a head dim that is a "
                f"multiple of 8 up to {CUDNN_MAX_HEAD_DIM}, got {dtype} and {head_dim}")
    return None
