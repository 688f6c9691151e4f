"""The train state laid out on a mesh, and the jitted steps with explicit in/out shardings.

Shared by the trainer and the AOT compiler, so what `lima_jax.aot` measures for a TPU topology is
the very step `lima_jax.train` runs.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lima_jax import sharding
from lima_jax.model import Llama, ModelConfig, abstract_model, param_shardings
from lima_jax.data.batches import BATCH_SCHEMA
from lima_jax.train.step import TrainState, eval_step, train_step


def state_shardings(cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Optimizer moments follow their parameters' shardings; counters are replicated."""
    params = param_shardings(cfg, mesh)
    abstract_params = nnx.to_pure_dict(nnx.state(abstract_model(cfg)))
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    replicated = NamedSharding(mesh, P())
    opt = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, params, transform_non_params=lambda _: replicated)
    # tree_map_params visits only parameter-shaped leaves with the second tree; map the rest here.
    opt = jax.tree.map(lambda s: s if isinstance(s, NamedSharding) else replicated, opt)
    return TrainState(step=replicated, params=params, opt_state=opt)


def abstract_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """ShapeDtypeStructs with shardings: what a restore or an AOT compile needs, nothing allocated."""
    params = nnx.to_pure_dict(nnx.state(abstract_model(cfg)))
    shapes = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, jax.eval_shape(optimizer.init, params))
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, state_shardings(cfg, optimizer, mesh)
    )


def init_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh, seed: int) -> TrainState:
    """A fresh state created directly in its shards (a 65B model never exists whole on one host)."""

    def init() -> TrainState:
        params = nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(seed))))
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

    return jax.jit(init, out_shardings=state_shardings(cfg, optimizer, mesh))()


def state_from_params(params: Any, optimizer: optax.GradientTransformation, cfg: ModelConfig, mesh: Mesh) -> TrainState:
    """A state at step 0 around given (already sharded) parameters, e.g. a pretrained checkpoint."""
    shardings = state_shardings(cfg, optimizer, mesh)
    init = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)), out_shardings=shardings)
    return init(params)


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
    return {k: sharding.batch_sharding(mesh) for k in BATCH_SCHEMA}


def abstract_batch(rows: int, seq_len: int, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        k: jax.ShapeDtypeStruct((rows, seq_len), dtype, sharding=sharding.batch_sharding(mesh))
        for k, dtype in BATCH_SCHEMA.items()
    }


def jit_train_step(
    config: ml_collections.ConfigDict,
    cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
):
    """The train step compiled with explicit shardings; the state is donated (updated in place)."""
    graphdef = nnx.graphdef(abstract_model(cfg))
    step = functools.partial(
        train_step, graphdef=graphdef, optimizer=optimizer, schedule=schedule, seed=config.seed, grad_accum=config.grad_accum
    )
    shardings = state_shardings(cfg, optimizer, mesh)
    replicated = NamedSharding(mesh, P())

    def run(state, batch):
        with sharding.activation_mesh(mesh):
            return step(state, batch)

    return jax.jit(
        run,
        in_shardings=(shardings, batch_shardings(mesh)),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )


def jit_eval_step(cfg: ModelConfig, mesh: Mesh):
    graphdef = nnx.graphdef(abstract_model(cfg))

    def run(params, batch):
        with sharding.activation_mesh(mesh):
            return eval_step(params, batch, graphdef=graphdef)

    return jax.jit(run, in_shardings=(param_shardings(cfg, mesh), batch_shardings(mesh)), out_shardings=NamedSharding(mesh, P()))
