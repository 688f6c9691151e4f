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
from lima_jax.lora import adapters
from lima_jax.lora.spec import LoraSpec
from lima_jax.model import Llama, ModelConfig, abstract_model, param_shardings
from lima_jax.data.batches import BATCH_SCHEMA
from lima_jax.train.step import TrainState, eval_step, train_step


def trained_abstract(cfg: ModelConfig, lora: LoraSpec | None = None) -> Any:
    """The shapes of what the optimizer trains: every parameter, or (a LoRA run) the adapters."""
    if lora is None:
        return nnx.to_pure_dict(nnx.state(abstract_model(cfg)))
    return adapters.abstract(cfg, lora)


def trained_dtype(cfg: ModelConfig, lora: LoraSpec | None = None) -> str:
    """The dtype of what the optimizer steps: LoRA's adapters are float32; otherwise the parameters' (bf16
    ones are stepped as `optim.narrow_params` says)."""
    return "float32" if lora is not None else cfg.param_dtype


def trained_shardings(cfg: ModelConfig, mesh: Mesh, lora: LoraSpec | None = None) -> Any:
    if lora is None:
        return param_shardings(cfg, mesh)
    return sharding.tree_shardings(adapters.axes(cfg, lora), adapters.abstract(cfg, lora), mesh)


def state_shardings(cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                    lora: LoraSpec | None = None) -> TrainState:
    """Optimizer moments follow their parameters' shardings; counters are replicated."""
    params = trained_shardings(cfg, mesh, lora)
    abstract_opt = jax.eval_shape(optimizer.init, trained_abstract(cfg, lora))
    replicated = NamedSharding(mesh, P())
    opt = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, params, transform_non_params=lambda _: replicated)
    # tree_map_params visits only parameter-shaped leaves with the second tree; map the rest here.
    opt = jax.tree.map(lambda s: s if isinstance(s, NamedSharding) else replicated, opt)
    return TrainState(step=replicated, params=params, opt_state=opt)


def abstract_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                   lora: LoraSpec | None = None) -> TrainState:
    """ShapeDtypeStructs with shardings: what a restore or an AOT compile needs, nothing allocated."""
    params = trained_abstract(cfg, lora)
    shapes = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, jax.eval_shape(optimizer.init, params))
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, state_shardings(cfg, optimizer, mesh, lora)
    )


def init_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh, seed: int) -> TrainState:
    """A fresh state created directly in its shards (a 65B model never exists whole on one host)."""

    def init() -> TrainState:
        params = nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(seed))))
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

    return jax.jit(init, out_shardings=state_shardings(cfg, optimizer, mesh))()


def state_from_params(params: Any, optimizer: optax.GradientTransformation, cfg: ModelConfig, mesh: Mesh,
                      lora: LoraSpec | None = None) -> TrainState:
    """A state at step 0 around given (already sharded) parameters, e.g. a pretrained checkpoint, or
    fresh adapters."""
    shardings = state_shardings(cfg, optimizer, mesh, lora)
    init = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)), out_shardings=shardings)
    return init(params)


def init_adapters(cfg: ModelConfig, lora: LoraSpec, mesh: Mesh, seed: int, frozen: Any) -> Any:
    """Fresh LoRA adapters on `frozen` (the base as the run holds it), created in their shards."""
    init = functools.partial(adapters.init, cfg, lora, jax.random.key(seed))
    return jax.jit(init, out_shardings=trained_shardings(cfg, mesh, lora))(frozen)


def shardings_of(tree: Any) -> Any:
    """Each leaf's sharding (arrays, or ShapeDtypeStructs that carry one)."""
    return jax.tree.map(lambda a: a.sharding, tree)


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
    lora: LoraSpec | None = None,
    frozen_shardings: Any = None,
):
    """The train step compiled with explicit shardings; the state is donated (updated in place). A LoRA
    run's step takes the frozen base as a third argument: `step(state, batch, frozen)`."""
    graphdef = nnx.graphdef(abstract_model(cfg))
    wear = None if lora is None else functools.partial(adapters.wear, spec=lora)
    step = functools.partial(
        train_step, graphdef=graphdef, optimizer=optimizer, schedule=schedule, seed=config.seed, grad_accum=config.grad_accum,
        wear=wear,
    )
    shardings = state_shardings(cfg, optimizer, mesh, lora)
    replicated = NamedSharding(mesh, P())

    def run(state, batch, *frozen):
        with sharding.activation_mesh(mesh):
            return step(state, batch, *frozen)

    return jax.jit(
        run,
        in_shardings=(shardings, batch_shardings(mesh)) + (() if lora is None else (frozen_shardings,)),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )


def jit_eval_step(cfg: ModelConfig, mesh: Mesh, lora: LoraSpec | None = None, frozen_shardings: Any = None):
    """Dev-loss sums for `(params, batch)`, or a LoRA run's `(adapters, batch, frozen)`."""
    graphdef = nnx.graphdef(abstract_model(cfg))

    def run(params, batch, *frozen):
        if lora is not None:
            params = adapters.wear(params, frozen[0], lora)
        with sharding.activation_mesh(mesh):
            return eval_step(params, batch, graphdef=graphdef)

    extra = () if lora is None else (frozen_shardings,)
    return jax.jit(run, in_shardings=(trained_shardings(cfg, mesh, lora), batch_shardings(mesh)) + extra,
                   out_shardings=NamedSharding(mesh, P()))


def fresh_optimizer_state(params: Any, optimizer: optax.GradientTransformation, cfg: ModelConfig, mesh: Mesh, step: int,
                          lora: LoraSpec | None = None) -> Any:
    """A new optimizer state for `params` whose learning-rate schedule stands at `step`: a resume from a
    step without one (its moments start over, as at step 0; the schedule must not)."""
    opt_state = state_from_params(params, optimizer, cfg, mesh, lora).opt_state
    is_schedule = lambda s: isinstance(s, optax.ScaleByScheduleState)  # noqa: E731
    at_step = lambda s: s._replace(count=jax.device_put(jnp.asarray(step, s.count.dtype), s.count.sharding))  # noqa: E731
    return jax.tree.map(lambda s: at_step(s) if is_schedule(s) else s, opt_state, is_leaf=is_schedule)


def dev_loss(eval_step, params: Any, batches, mesh: Mesh) -> float:
    """Mean dev loss per target token over the whole dev set."""
    loss_sum = count = 0.0
    for batch in batches:
        out = eval_step(params, sharding.global_batch(batch.arrays(), mesh))
        loss_sum += float(out["loss_sum"])
        count += float(out["count"])
    return loss_sum / max(count, 1.0)
