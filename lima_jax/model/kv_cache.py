"""The KV cache decoding writes each new token's keys and values into."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lima_jax.model.config import ModelConfig
from lima_jax.sharding import constrain


class KVCache(NamedTuple):
    """Keys and values of every layer for `S` slots, with each slot's segment id.

    Slot `j` holds the token written at step `j`; segment id 0 marks padding and empty slots, so a
    real token (segment >= 1) never attends to them. `index` is the next slot to write. Each layer
    has its own arrays (a step updates them in place, never slicing a stacked cache). Keys are laid
    out (B, K, S, Dh) and values (B, K, Dh, S): both attention products then contract their minor
    dimension, and XLA reads the cache as it lies instead of transposing a copy every step.
    """

    k: tuple[jax.Array, ...] | jax.Array  # L arrays (B, K, S, Dh); one (L, B, K, S, Dh) if cfg.decode_scan
    v: tuple[jax.Array, ...] | jax.Array  # L arrays (B, K, Dh, S); one (L, B, K, Dh, S) if cfg.decode_scan
    segment_ids: jax.Array  # (B, S) int32
    index: jax.Array  # () int32

    K_AXES = ("batch", "kv_heads", "length", "head_dim")  # logical names, as for parameters
    V_AXES = ("batch", "kv_heads", "head_dim", "length")

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, max_len: int) -> "KVCache":
        kv, dh, dtype = cfg.num_kv_heads, cfg.resolved_head_dim, jnp.dtype(cfg.dtype)

        def layers(shape, names):
            if cfg.decode_scan:
                return constrain(jnp.zeros((cfg.num_layers, *shape), dtype), ("layers", *names))
            return tuple(constrain(jnp.zeros(shape, dtype), names) for _ in range(cfg.num_layers))

        return cls(
            k=layers((batch, kv, max_len, dh), cls.K_AXES),
            v=layers((batch, kv, dh, max_len), cls.V_AXES),
            segment_ids=constrain(jnp.zeros((batch, max_len), jnp.int32), ("batch", "length")),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k[0].shape[-2]
