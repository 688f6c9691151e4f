"""The training loss over the vocabulary, a slice of the sequence at a time.

The (B, T, V) float32 logits are the largest array of a small model's step: 2,048 tokens of a 49,152-id
vocabulary are 0.4 GB, and the cross-entropy's softmax and gradient of them as much again each. Here
the head runs on (B, c, D) slices of the final hidden states under `lax.scan`, each slice rematerialized
in the backward pass, so at most one slice's logits exist at a time. Every token's cross-entropy is
computed as it would be whole; only the order of the final sum differs.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from lima_jax import sharding

# Logits per device in one slice: 2**24 float32 are 64 MiB.
SLICE_LOGITS = 2**24


def slice_length(rows: int, length: int, vocab: int, devices: int = 1) -> int:
    """The longest slice of the sequence (a divisor of `length`) whose logits, `rows` x slice x `vocab`
    spread over `devices`, hold at most SLICE_LOGITS per device; the whole sequence when they all fit."""
    budget = SLICE_LOGITS * devices
    return max((c for c in range(1, length + 1) if length % c == 0 and rows * c * vocab <= budget), default=1)


def cross_entropy_sum(head: Callable[[jax.Array], jax.Array], hidden: jax.Array, targets: jax.Array,
                      weights: jax.Array, vocab: int) -> jax.Array:
    """Sum over tokens of `weights` x the cross-entropy of `head(hidden)` (float32 logits over `vocab`
    ids) against `targets`, for hidden states (B, T, D) and targets and weights (B, T)."""

    def piece(h, t, w):
        nll = optax.softmax_cross_entropy_with_integer_labels(head(h), t)  # float32
        return jnp.sum(nll * w.astype(jnp.float32))

    b, t, d = hidden.shape
    mesh = sharding.active_mesh()
    c = slice_length(b, t, vocab, 1 if mesh is None else mesh.size)
    if c == t:
        return piece(hidden, targets, weights)
    n = t // c
    slices = lambda x: x.reshape(b, n, c, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731 - (n, B, c, ...)
    piece = jax.checkpoint(piece)  # the backward pass recomputes a slice's logits instead of keeping them

    def add(total, xs):
        return total + piece(*xs), None

    total, _ = jax.lax.scan(add, jnp.zeros((), jnp.float32), (slices(hidden), slices(targets), slices(weights)))
    return total
