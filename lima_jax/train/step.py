"""The pure training and evaluation steps: (state, batch) -> (state, metrics).

The loss is the mean next-token cross-entropy over the batch's target tokens (those with weight 1),
computed a slice of the sequence at a time (`loss.py`):
token losses and target counts are summed over every micro-batch and divided once, so gradient
accumulation and packing leave the loss unchanged. Dropout keys derive from (seed, step), so the
state needs no RNG and a resumed run draws the same masks.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lima_jax.train.loss import cross_entropy_sum


class TrainState(NamedTuple):
    step: jax.Array  # () int32: the number of steps taken, which is also the data position
    params: Any  # pure dict of arrays
    opt_state: Any


def token_losses(graphdef: nnx.GraphDef, params: Any, batch: dict, dropout_rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(sum of target-token cross-entropies, number of target tokens) for one (micro-)batch."""
    model = nnx.merge(graphdef, params)
    hidden = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"], dropout_rng=dropout_rng)
    loss_sum = cross_entropy_sum(model.logits, hidden, batch["targets"], batch["weights"], model.cfg.vocab_size)
    return loss_sum, jnp.sum(batch["weights"].astype(jnp.float32))


def _microbatches(batch: dict, n: int) -> dict:
    """(rows, T) -> (n, rows / n, T), micro-batch i taking rows i, i+n, ...: every device holds a
    contiguous block of rows, so each micro-batch stays spread over all devices."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


Wear = Callable[[Any, Any], Any]  # (trained params, frozen params) -> the model's parameter tree


def train_step(
    state: TrainState,
    batch: dict,
    frozen: Any = None,
    *,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    seed: int,
    grad_accum: int,
    wear: Wear | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer step on `state.params`. With `wear` (a LoRA run), those are the adapters, and the
    model runs on `wear(adapters, frozen)`: the frozen base is an input, never differentiated."""
    step_key = jax.random.fold_in(jax.random.key(seed), state.step)
    model_params = (lambda p: p) if wear is None else (lambda p: wear(p, frozen))
    # Differentiates the loss sum; the target count rides along as aux.
    grad_fn = jax.value_and_grad(lambda p, mb, key: token_losses(graphdef, model_params(p), mb, key), has_aux=True)

    if grad_accum == 1:
        # No accumulation: a zeroed gradient buffer and a length-1 scan would cost a write and a
        # copy of every parameter's gradient per step.
        (loss_sum, count), grads = grad_fn(state.params, batch, jax.random.fold_in(step_key, 0))
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    else:

        def accumulate(carry, xs):
            grads, loss_sum, count = carry
            i, micro = xs
            (l, c), g = grad_fn(state.params, micro, jax.random.fold_in(step_key, i))
            return (jax.tree.map(jnp.add, grads, g), loss_sum + l, count + c), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        micro = _microbatches(batch, grad_accum)
        (grads, loss_sum, count), _ = jax.lax.scan(
            accumulate, (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)), (jnp.arange(grad_accum), micro)
        )
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss_sum / denom,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(state.step),
        "target_tokens": count,
    }
    return TrainState(state.step + 1, params, opt_state), metrics


def eval_step(params: Any, batch: dict, *, graphdef: nnx.GraphDef) -> dict:
    """Sums for the dev loss: no dropout, no update."""
    loss_sum, count = token_losses(graphdef, params, batch, None)
    return {"loss_sum": loss_sum, "count": count}
