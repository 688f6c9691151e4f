"""The model's architecture as data: `ModelConfig`, the rules its values obey, and the counts that
follow from it alone.

It imports no JAX, so configs (`configs/*.py`, `lima_jax.recipe`) load and are checked before a
command pays for JAX; `llama.py` builds the network from it.
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
    scan_layers: bool = True  # False unrolls the layers: a longer compile, a faster CPU step at 58M (README "Speed")
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

    def validate(self, seq_len: int | None = None) -> None:
        """Checks the values that the type system cannot: a LimaError naming the first bad key
        (`config key model.KEY: why`). `seq_len` is the length training runs the attention kernel
        at (default `max_len`)."""

        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise LimaError(f"config key model.{key}: {why}")

        for key in ("dim", "num_layers", "num_heads", "num_kv_heads", "ffn_dim", "vocab_size", "max_len"):
            need(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        need(self.head_dim >= 0, "head_dim", f"must be >= 0 (0 means dim / num_heads), got {self.head_dim}")
        need(self.head_dim > 0 or self.dim % self.num_heads == 0, "dim", f"{self.dim} is not divisible by model.num_heads={self.num_heads}")
        need(self.num_heads % self.num_kv_heads == 0, "num_kv_heads", f"{self.num_kv_heads} does not divide model.num_heads={self.num_heads}")
        need(self.resolved_head_dim % 2 == 0, "head_dim", "rotary embeddings need an even head dim")
        need(0.0 <= self.residual_dropout < 1.0, "residual_dropout", f"must be in [0, 1), got {self.residual_dropout}")
        impl = self.attention
        need(impl in ATTENTION_IMPLS, "attention", f"must be one of {', '.join(ATTENTION_IMPLS)}, got {impl!r}")
        problem = unsupported(impl, self.max_len if seq_len is None else seq_len, self.resolved_head_dim, self.dtype)
        need(problem is None, "attention", (problem or "").removeprefix(f"model.attention={impl} "))
        need(self.remat in REMAT_POLICIES, "remat", f"must be one of {', '.join(REMAT_POLICIES)}, got {self.remat!r}")
        for key in ("dtype", "param_dtype"):
            need(getattr(self, key) in DTYPES, key, f"must be one of {', '.join(DTYPES)}, got {getattr(self, key)!r}")
        need(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
        need(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        need(self.rope_scaling in ROPE_SCALINGS, "rope_scaling", f"must be one of {', '.join(ROPE_SCALINGS)}, got {self.rope_scaling!r}")
        need(self.family in FAMILIES, "family", f"must be one of {', '.join(FAMILIES)}, got {self.family!r}")

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
