"""The training loss over the vocabulary, a slice of the sequence at a time.

The (B, T, V) float32 logits are the largest array of a small model's step: 2,048 tokens of a 49,152-id
vocabulary are 0.4 GB, and the cross-entropy's softmax and gradient of them as much again each. Here
the head runs on (B, c, D) slices of the final hidden states under `lax.scan`, and when differentiated
takes each slice's gradients while that slice's logits exist, so at most one slice's logits exist at a
time and none is computed twice. Every token's cross-entropy is computed as it would be whole; only the
order of the sums over tokens differs.
"""
from __future__ import annotations

import functools
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
    ids) against `targets`, for hidden states (B, T, D) and targets and weights (B, T).

    Differentiated, each slice's gradients (to its hidden states and to the head's parameters, whatever
    `head` closes over) are taken as its loss is, while its logits exist: the backward pass then only
    scales them. That is the arithmetic autodiff would do, less a second forward of the head per slice
    (rematerializing the logits cost as many FLOPs as the gradient of either operand)."""
    b, t, _ = hidden.shape
    mesh = sharding.active_mesh()
    c = slice_length(b, t, vocab, 1 if mesh is None else mesh.size)
    slices = lambda x: x.reshape(b, t // c, c, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731 - (n, B, c, ...)
    head_of, params = jax.closure_convert(head, hidden[:, :c])  # the head's parameters, as arguments
    return _sliced_loss(head_of, slices(hidden), slices(targets), slices(weights), *params)


def _piece(head_of: Callable, h: jax.Array, t: jax.Array, w: jax.Array, *params: jax.Array) -> jax.Array:
    nll = optax.softmax_cross_entropy_with_integer_labels(head_of(h, *params), t)  # float32
    return jnp.sum(nll * w.astype(jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sliced_loss(head_of: Callable, hidden: jax.Array, targets: jax.Array, weights: jax.Array, *params: jax.Array) -> jax.Array:
    """The loss summed over (n, B, c, ...) slices, one slice's logits at a time."""
    def add(total, xs):
        return total + _piece(head_of, *xs, *params), None

    return jax.lax.scan(add, jnp.zeros((), jnp.float32), (hidden, targets, weights))[0]


def _sliced_loss_forward(head_of, hidden, targets, weights, *params):
    trained = [i for i, p in enumerate(params) if jnp.issubdtype(p.dtype, jnp.inexact)]  # not e.g. int ids
    argnums = (1, *(4 + i for i in trained))  # the hidden slice and every float parameter

    def add(carry, xs):
        total, grads = carry
        h, t, w = xs
        value, (d_h, *d_params) = jax.value_and_grad(_piece, argnums)(head_of, h, t, w, *params)
        grads = [g + d.astype(jnp.float32) for g, d in zip(grads, d_params)]
        return (total + value, grads), d_h

    zeros = [jnp.zeros(params[i].shape, jnp.float32) for i in trained]
    (total, d_params), d_hidden = jax.lax.scan(add, (jnp.zeros((), jnp.float32), zeros), (hidden, targets, weights))
    d_all = [None] * len(params)
    for i, d in zip(trained, d_params):
        d_all[i] = d.astype(params[i].dtype)
    return total, (d_hidden, d_all)


def _sliced_loss_backward(head_of, saved, g):
    d_hidden, d_params = saved
    return ((g * d_hidden).astype(d_hidden.dtype), None, None,
            *[None if d is None else (g * d).astype(d.dtype) for d in d_params])


_sliced_loss.defvjp(_sliced_loss_forward, _sliced_loss_backward)
