"""A checksum of each array a checkpoint holds, saved with it and checked when it is read back.

Orbax 0.12.8 stores arrays as zstd frames without a content checksum, in OCDBT files that check only
their own index, and offers no option to add TensorStore's `crc32c` codec: flipped bytes in a tensor
file otherwise read back as wrong weights, silently.

An array's checksum is the sum, modulo 2**32, of each element's bits (as an unsigned integer) times
2i + 1 for its flat index i: any change to one element changes it, and it is the same for every
sharding. On accelerators it is one jitted reduction over the global arrays (no host gathers a sharded
one; compiled once per tree of shapes); arrays already in host memory (numpy, as a conversion writes,
or on CPU devices) are summed by numpy, in blocks.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lima_jax.errors import LimaError

Record = dict[str, list]  # tensor path -> [stored dtype, checksum]
_BLOCK = 1 << 20  # elements per block on the host (a few MiB: in cache)
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def of(tree: Any) -> Record:
    """The dtype and checksum of every array in `tree`, keyed by its path (`layers.wq`). A 64-bit array
    (numpy only: JAX without x64 has none) has none: it would be read back narrowed."""
    leaves = [(_name(path), a) for path, a in jax.tree_util.tree_flatten_with_path(tree)[0] if np.dtype(a.dtype).itemsize <= 4]
    dtypes = [np.dtype(a.dtype).name for _, a in leaves]
    return {name: [dtype, value] for (name, _), dtype, value in zip(leaves, dtypes, _sums([a for _, a in leaves], dtypes))}


def read_as(target: Any, record: Record | None) -> Any:
    """`target` (ShapeDtypeStructs) with each leaf that would be read narrower than it is stored (fp32
    into bf16) read as stored instead: its checksum is of the stored bits. `checked` narrows it after."""
    if record is None:
        return target

    def widen(path, t):
        stored = np.dtype(record.get(_name(path), [t.dtype])[0])
        return t if np.can_cast(stored, t.dtype, "safe") else jax.ShapeDtypeStruct(t.shape, stored, sharding=t.sharding)

    return jax.tree_util.tree_map_with_path(widen, target)


def checked(tree: Any, target: Any, record: Record | None, where: str) -> Any:
    """`tree` (read with `read_as`) after checking each array `record` holds (None: saved before the
    checksums) against it, in the dtypes of `target`. A mismatch is a LimaError naming `where` and the tensor."""
    if record is not None:
        leaves = [(_name(path), a) for path, a in jax.tree_util.tree_flatten_with_path(tree)[0] if _name(path) in record]
        sums = _sums([a for _, a in leaves], [record[name][0] for name, _ in leaves])
        for (name, _), value in zip(leaves, sums):
            if record[name][1] != value:
                raise LimaError(f"{where}: tensor {name} does not match the checksum saved with it: its file is damaged")
    return jax.tree.map(lambda a, t: a if a.dtype == t.dtype else a.astype(t.dtype), tree, target)


def _name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".")


def _sums(arrays: list, dtypes: list[str]) -> list[int]:
    """Each array's checksum as `dtypes` (its stored dtype: an array read wider is cast back exactly).
    Arrays in host memory (numpy, or on CPU devices) are summed by numpy: nothing to compile."""
    on_device = [i for i, a in enumerate(arrays) if isinstance(a, jax.Array) and not _in_host_memory(a)]
    sums = jax.device_get(_device_sums([arrays[i] for i in on_device], tuple(dtypes[i] for i in on_device))) if on_device else []
    sums = dict(zip(on_device, sums))
    return [int(sums[i]) if i in sums else _host_sum(np.asarray(a).astype(dtypes[i], copy=False)) for i, a in enumerate(arrays)]


def _in_host_memory(a: jax.Array) -> bool:
    return a.is_fully_addressable and all(d.platform == "cpu" for d in a.sharding.device_set)


@functools.partial(jax.jit, static_argnums=1)
def _device_sums(arrays: list[jax.Array], dtypes: tuple[str, ...]) -> list[jax.Array]:
    """Each array's checksum as `dtypes` (its stored dtype: a leaf read wider is cast back exactly)."""
    return [_sum(a.astype(dtype)) for a, dtype in zip(arrays, dtypes)]


def _sum(a: jax.Array) -> jax.Array:
    words = a.astype(jnp.uint32) if a.dtype == jnp.bool_ else jax.lax.bitcast_convert_type(a, _UNSIGNED[a.dtype.itemsize]).astype(jnp.uint32)
    index, stride = jnp.zeros(words.shape, jnp.uint32), 1  # the flat index mod 2**32, from per-axis iotas
    for axis in reversed(range(words.ndim)):
        index += jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= words.shape[axis]
    return jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)


def _host_sum(a: np.ndarray) -> int:
    """Block by block: the weights of block [s, s + n) are 2s + (2j + 1), so one table serves every block."""
    words = np.ascontiguousarray(a).reshape(-1).view(_UNSIGNED[a.dtype.itemsize])  # a bool's byte is 0 or 1
    total = 0
    for start in range(0, words.size, _BLOCK):
        block = words[start:start + _BLOCK]
        total += int(np.sum(block * _weights()[:block.size], dtype=np.uint32)) + 2 * start * int(np.sum(block, dtype=np.uint32))
    return total % 2**32


@functools.cache
def _weights() -> np.ndarray:
    return np.arange(_BLOCK, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
