"""Device meshes and logical-axis rules: where every parameter and activation lives.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters,
gradients and optimizer state sharded across it) and `tensor` (heads and MLP columns split, as in
Megatron). The model names its axes logically (embed, heads, mlp, ...); RULES maps those names to
mesh axes, so changing the parallelism is a config change, never a model change.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lima_jax.errors import LimaError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Activations use their own names (act_*) so that a batch sharded over
# (data, fsdp) never asks for fsdp twice.
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
)


def check_mesh(requested: dict[str, int]) -> list[int]:
    """The requested sizes for (data, fsdp, tensor), each positive or -1 (at most one: the rest)."""
    sizes = [int(requested.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise LimaError("config key mesh: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise LimaError(f"config key mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    return sizes


def mesh_shape(requested: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes for (data, fsdp, tensor); one -1 takes the devices the others leave."""
    sizes = check_mesh(requested)
    fill = [i for i, s in enumerate(sizes) if s == -1]
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise LimaError(f"config key mesh: {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} devices")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise LimaError(
            f"config key mesh: data*fsdp*tensor = {math.prod(sizes)} but there are {num_devices} devices "
            f"({dict(zip(MESH_AXES, sizes))})"
        )
    return tuple(sizes)


def make_mesh(requested: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(requested, len(devices))
    try:  # topology-aware device order on TPU/GPU; plain order elsewhere
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=RULES) -> P:
    """The PartitionSpec for an array with these logical axis names.

    A mesh axis is used once per array, and only where it divides the dimension (8 KV heads on a
    tensor axis of 16 stay replicated rather than fail to compile).
    """
    return _spec(names, shape, mesh, rules)[0]


def _spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules) -> tuple[P, list[tuple[str, int, int]]]:
    """The spec, and the (mesh axis, dimension, axis size) of each axis dropped for not dividing."""
    table = dict(rules)
    used: set[str] = set()
    out, dropped = [], []
    for name, dim in zip(names, shape):
        axes = table.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            dropped.append((axes[-1], dim, mesh.shape[axes[-1]]))
            axes = axes[:-1]
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out), dropped


_REPORTED: set[tuple] = set()  # drops already said, so a run says each once


def tree_shardings(logical: Any, abstract: Any, mesh: Mesh, rules=RULES) -> Any:
    """NamedShardings for a tree of arrays, given a matching tree of logical-name tuples. A mesh axis
    dropped because it does not divide a parameter's dimension is said once: that parameter is then
    replicated over it, which costs memory."""

    def one(path, names, a) -> NamedSharding:
        partition, dropped = _spec(names, a.shape, mesh, rules)
        for axis, dim, size in dropped:
            name = jax.tree_util.keystr(path, simple=True, separator=".")
            if (name, axis, dim, size) not in _REPORTED:
                _REPORTED.add((name, axis, dim, size))
                if jax.process_index() == 0:
                    print(f"note: {name} is not sharded over mesh axis {axis!r}: its dimension {dim} "
                          f"does not divide by {size}", file=sys.stderr, flush=True)
        return NamedSharding(mesh, partition)

    return jax.tree_util.tree_map_with_path(
        one, logical, abstract,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(n, (str, type(None))) for n in x),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over (data, fsdp); sequence positions whole on each device."""
    return NamedSharding(mesh, P(("data", "fsdp"), None))


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_fits_mesh(batch_size: int, grad_accum: int, mesh: Mesh, process_count: int | None = None) -> int:
    """Rows per host must split evenly over the data axes and the micro-batches: returns the row
    multiple each host rounds its packed rows up to."""
    dp = data_parallel_size(mesh)
    if batch_size % dp:
        raise LimaError(f"config key batch_size: {batch_size} does not divide over the data axes (data*fsdp = {dp})")
    per_step = dp * grad_accum
    return per_step // math.gcd(per_step, jax.process_count() if process_count is None else process_count)


def global_batch(arrays: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's rows -> one global array per field, sharded over the data axes."""
    target = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(target, v) for k, v in arrays.items()}


# Activation constraints: the trainer sets a mesh here; the model asks `constrain` to pin its
# residual stream and logits, which is a no-op outside training (e.g. in the sampler on one device).
_ACTIVE_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("lima_mesh", default=None)


@contextlib.contextmanager
def activation_mesh(mesh: Mesh) -> Iterator[None]:
    token = _ACTIVE_MESH.set(mesh)
    try:
        yield
    finally:
        _ACTIVE_MESH.reset(token)


def active_mesh() -> Mesh | None:
    """The mesh the trainer set for this trace, if any."""
    return _ACTIVE_MESH.get()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    mesh = _ACTIVE_MESH.get()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec(names, x.shape, mesh)))


def initialize_distributed(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
                           *, shutdown_timeout_s: int | None = None) -> None:
    """JAX's multi-controller runtime: every host runs the same program.

    On TPU pods and under SLURM `jax.distributed.initialize()` finds its peers by itself; elsewhere
    (GPU nodes, tests with several CPU processes) the coordinator is given explicitly.
    `shutdown_timeout_s`: how long a finished process waits at exit for the others (None: JAX's default).
    """
    extra = {} if shutdown_timeout_s is None else {"shutdown_timeout_seconds": shutdown_timeout_s}
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id, **extra)
    else:
        jax.distributed.initialize(**extra)
