"""LIMA's optimiser: AdamW (b1 0.9, b2 0.95, weight decay 0.1), learning rate 1e-5 falling linearly
to 1e-6 over the whole run with no warmup; gradient clipping only when asked (the paper states none).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """`optim.lr` at step 0, `optim.end_lr` at the last step (total_steps - 1), linear between."""
    return optax.linear_schedule(optim.lr, optim.end_lr, transition_steps=max(total_steps - 1, 1))


BIASES = ("bq", "bk", "bv", "bo")  # the attention biases some architectures have (model.Block)


def decay_mask(params):
    """Weight decay on weight matrices and embeddings; norm scales and biases are not pulled towards
    zero (as transformers' Trainer leaves them)."""
    def decays(path, _) -> bool:
        return "norm" not in jax.tree_util.keystr(path) and getattr(path[-1], "key", None) not in BIASES

    return jax.tree_util.tree_map_with_path(decays, params)


class MasterWeights(NamedTuple):
    master: Any  # the parameters in float32
    inner: Any


def keep_master_weights(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Mixed precision for narrow (bf16) parameters: `inner` steps a float32 copy of them, and each update
    takes the parameters to that copy's rounding. Applied to bf16 weights directly, LIMA's updates of about
    1e-5 relative would mostly round away: bf16 resolves 2**-8."""

    def init(params):
        master = jax.tree.map(lambda p: p.astype(jnp.float32) if hasattr(p, "astype") else p, params)
        return MasterWeights(master, inner.init(master))

    def update(grads, state, params=None):
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        updates, inner_state = inner.update(grads, state.inner, state.master)
        master = optax.apply_updates(state.master, updates)
        # In float32, p + (m - p) is m (to an ulp): the parameters become m rounded to their dtype.
        return jax.tree.map(lambda m, p: m - p.astype(jnp.float32), master, params), MasterWeights(master, inner_state)

    return optax.GradientTransformation(init, update)


def stochastic_rounding(inner: optax.GradientTransformation, seed: int = 0) -> optax.GradientTransformation:
    """Narrow (bf16) parameters without a master copy: each updated parameter is rounded up or down at
    random, in proportion to how near it lies to each, so that an update bf16 cannot resolve still moves
    the parameter by that much on average. Half the bytes of a float32 master copy."""

    def init(params):
        return inner.init(params), jnp.zeros((), jnp.int32)

    def update(grads, state, params=None):
        inner_state, count = state
        updates, inner_state = inner.update(grads, inner_state, params)
        keys = iter(jax.random.split(jax.random.fold_in(jax.random.key(seed), count), len(jax.tree.leaves(params))))
        new = jax.tree.map(lambda p, u: _round_at_random(p.astype(jnp.float32) + u, p.dtype, next(keys)), params, updates)
        # Both are bf16 values, so in float32 p + (new - p) is exactly new.
        return jax.tree.map(lambda n, p: n.astype(jnp.float32) - p.astype(jnp.float32), new, params), (inner_state, count + 1)

    return optax.GradientTransformation(init, update)


def _round_at_random(x: jax.Array, dtype, key: jax.Array) -> jax.Array:
    """float32 `x` to bfloat16, up or down with the probabilities that make the rounding unbiased: random
    bits added below bf16's 16 kept bits, then truncated."""
    if jnp.dtype(dtype) != jnp.bfloat16:
        return x.astype(dtype)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    noise = jax.random.bits(key, x.shape, jnp.uint32) >> 16
    return jax.lax.bitcast_convert_type((bits + noise) & jnp.uint32(0xFFFF0000), jnp.float32).astype(jnp.bfloat16)


def narrow_state(inner: optax.GradientTransformation, dtype: str) -> optax.GradientTransformation:
    """`inner` with its floating-point state (AdamW's moments) stored in `dtype`, computed in float32."""

    def cast(tree, to):
        floating = lambda s: hasattr(s, "dtype") and jnp.issubdtype(s.dtype, jnp.floating)  # noqa: E731
        return jax.tree.map(lambda s: s.astype(to) if floating(s) else s, tree)

    def update(grads, state, params=None):
        updates, state = inner.update(grads, cast(state, jnp.float32), params)
        return updates, cast(state, dtype)

    return optax.GradientTransformation(lambda params: cast(inner.init(params), dtype), update)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int, param_dtype: str = "float32") -> optax.GradientTransformation:
    """AdamW as the recipe sets it, plus the lean switches: `optim.moments_dtype` stores the moments
    narrower; parameters narrower than float32 (`model.param_dtype`) are updated as `optim.narrow_params`
    says: through a float32 master copy, by stochastic rounding, or rounded to nearest (LIMA's small updates
    then mostly vanish)."""
    adamw = optax.adamw(
        learning_rate(optim, total_steps),
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        mask=decay_mask,
    )
    if optim.get("moments_dtype"):
        adamw = narrow_state(adamw, optim.moments_dtype)
    if optim.grad_clip > 0:
        adamw = optax.chain(optax.clip_by_global_norm(optim.grad_clip), adamw)
    if jnp.dtype(param_dtype).itemsize < 4:
        how = optim.get("narrow_params", "master")
        if how == "master":
            adamw = keep_master_weights(adamw)
        elif how == "stochastic":
            adamw = stochastic_rounding(adamw)
    return adamw
