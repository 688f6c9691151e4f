"""The frozen base of a QLoRA run: each big projection stored quantized in blocks, dequantized before its matmul.

QLoRA (Dettmers et al. 2023) trains low-rank adapters on a base that never changes, so the base can be kept in a
few bits and only the adapters (and their optimizer state) stay in full precision. Each weight is flattened and cut
into blocks of BLOCK values; a block keeps its absmax as an fp32 scale, so one outlier only costs its own block.
- int8: symmetric codes round(w / absmax * 127); 1.0625 bytes per parameter.
- nf4: the 16 NormalFloat levels (as bitsandbytes publishes them), two 4-bit codes per byte; 0.5625 bytes per
  parameter. The scales stay fp32 (no double quantization).
The compute dtype never changes: `dense` dequantizes in fp32 and casts, right where the weight is used."""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

BASE_DTYPES = ("float32", "bfloat16", "int8", "nf4")  # what lora.base_dtype may say ("" = as stored)
QUANTIZED = ("int8", "nf4")
BLOCK = 64  # elements per scale

# bitsandbytes `get_4bit_type("nf4")`, the table of the QLoRA paper (appendix E), in code order.
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)
_NF4_MIDPOINTS = (NF4[1:] + NF4[:-1]) / 2  # code i is nearest between midpoints i-1 and i


@functools.partial(jax.tree_util.register_dataclass, data_fields=["codes", "scales"], meta_fields=["kind", "shape"])
@dataclasses.dataclass(frozen=True)
class Quantized:
    """A stack of weights quantized per block; scan may slice the leading axes of codes and scales alike."""

    codes: jax.Array  # int8: (*lead, nblocks, BLOCK) int8; nf4: (*lead, nblocks, BLOCK // 2) uint8, high nibble first
    scales: jax.Array  # (*lead, nblocks) float32: each block's absmax
    kind: str  # "int8" | "nf4"
    shape: tuple[int, ...]  # one weight's shape, without the leading stacked axes

    def dense(self, dtype) -> jax.Array:
        """The weights, (*lead, *shape) in dtype; lead is whatever leading axes the codes still have."""
        lead = self.codes.shape[:-2]
        if self.kind == "int8":
            values = self.codes.astype(jnp.float32) * (self.scales[..., None] / 127)
        else:
            nibbles = jnp.stack([self.codes >> 4, self.codes & 15], axis=-1).reshape(*self.codes.shape[:-1], BLOCK)
            values = jnp.asarray(NF4)[nibbles] * self.scales[..., None]
        values = values.reshape(*lead, -1)[..., :math.prod(self.shape)]  # drop the padding
        return values.reshape(*lead, *self.shape).astype(dtype)

    def project(self, spec: str, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """jnp.einsum(spec, x, self.dense(x.dtype)); key unused (the interface of a structured weight)."""
        del key
        return jnp.einsum(spec, x, self.dense(x.dtype))

    @property
    def nbytes(self) -> int:
        """Bytes held on the device: codes + scales."""
        return self.codes.size * self.codes.dtype.itemsize + self.scales.size * self.scales.dtype.itemsize


def quantize(w: jax.Array, kind: str, lead: int = 1) -> Quantized:
    """The first `lead` axes of w (the stacked layer axis) are kept; each weight (the rest) is flattened,
    zero-padded to a multiple of BLOCK, and quantized per block. Raises ValueError on a non-finite value
    (checked when w is concrete; the caller names the tensor)."""
    if kind not in QUANTIZED:
        raise ValueError(f"cannot quantize to {kind!r}; expected one of {', '.join(QUANTIZED)}")
    if not 0 <= lead <= w.ndim:
        raise ValueError(f"lead={lead} leading axes asked of a weight of shape {tuple(w.shape)}")
    codes, scales = _quantize(w, kind, lead)
    if not isinstance(scales, jax.core.Tracer) and not bool(jnp.isfinite(scales).all()):  # NaN/inf reach the absmax
        raise ValueError(f"weight of shape {tuple(w.shape)} holds non-finite values (NaN or inf); cannot quantize")
    return Quantized(codes, scales, kind, tuple(w.shape[lead:]))


@functools.partial(jax.jit, static_argnames=("kind", "lead"))
def _quantize(w: jax.Array, kind: str, lead: int) -> tuple[jax.Array, jax.Array]:
    if lead:  # one weight at a time: a whole stack at once took float32 copies of every layer (54 GiB for 7B)
        return jax.lax.map(lambda one: _quantize(one, kind, lead - 1), w)
    flat = w.astype(jnp.float32).reshape(*w.shape[:lead], -1)
    flat = jnp.pad(flat, [(0, 0)] * lead + [(0, -flat.shape[-1] % BLOCK)])
    blocks = flat.reshape(*flat.shape[:-1], -1, BLOCK)
    absmax = jnp.abs(blocks).max(axis=-1)
    normed = blocks / jnp.where(absmax == 0, 1, absmax)[..., None]  # an all-zero block stays zero
    if kind == "int8":
        return jnp.round(normed * 127).astype(jnp.int8), absmax
    codes = jnp.searchsorted(jnp.asarray(_NF4_MIDPOINTS), normed).astype(jnp.uint8)  # nearest code; ties go down
    return (codes[..., 0::2] << 4) | codes[..., 1::2], absmax
