"""The layers' arithmetic, as functions of arrays: RMSNorm, rotary embeddings, LIMA's residual dropout,
and `project`, every weight product's one hook (a LoRA adapter or a quantized weight applies itself
there).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lima_jax.model.config import ModelConfig


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32, as Hugging Face's LlamaRMSNorm does, cast back to x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (scale.astype(x.dtype) * normed.astype(x.dtype)).astype(x.dtype)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up, the LLaMA MLP's gating. Its gradient keeps only the two inputs and recomputes the
    sigmoid: JAX's own rule saves three more (B, T, F) arrays a layer (the sigmoid and two products),
    which a scan over the layers then zero-fills and copies into its stacks."""
    return jax.nn.silu(gate) * up


def _swiglu_forward(gate: jax.Array, up: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return swiglu(gate, up), (gate, up)


def _swiglu_backward(saved: tuple[jax.Array, jax.Array], dh: jax.Array) -> tuple[jax.Array, jax.Array]:
    gate, up = saved
    sig = jax.nn.sigmoid(gate)
    return dh * up * sig * (1 + gate * (1 - sig)), dh * gate * sig


swiglu.defvjp(_swiglu_forward, _swiglu_backward)


def rope_frequencies(cfg: ModelConfig) -> np.ndarray:
    """The rotary inverse frequencies (Dh/2,) in float32, as Hugging Face computes them; with
    `rope_scaling="llama3"`, Llama 3.1's: long wavelengths divided by `rope_factor`, short ones kept,
    and the band between them interpolated smoothly."""
    dh = cfg.resolved_head_dim
    inv_freq = (1.0 / (cfg.rope_theta ** (np.arange(0, dh, 2, dtype=np.float32) / np.float32(dh)))).astype(np.float32)
    if cfg.rope_scaling == "none":
        return inv_freq
    factor, low, high, old_len = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_max_len
    wavelen = 2 * np.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled).astype(np.float32)


def rotary(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotary embedding in the "rotate-half" layout: x (B, T, heads, Dh), positions (B, T),
    inv_freq (Dh/2,) from `rope_frequencies`."""
    half = x.shape[-1] // 2
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, Dh/2)
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def dropout_rates(num_layers: int, top_rate: float) -> np.ndarray:
    """LIMA's residual dropout schedule: 0.0 at the bottom layer, `top_rate` at the top, linear."""
    return np.linspace(0.0, top_rate, num_layers, dtype=np.float32)


def residual_dropout(x: jax.Array, rate: jax.Array, key: jax.Array | None) -> jax.Array:
    """Inverted dropout with a traced rate (it differs per layer); a no-op without a key."""
    if key is None:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


def project(spec: str, x: jax.Array, weight: nnx.Variable | jax.Array | object, key: jax.Array | None = None) -> jax.Array:
    """x contracted with a weight by the einsum `spec` (weight last): a plain array, cast to x's dtype,
    or a structured weight that applies itself, given `key` for its dropout (in training, a frozen base
    wearing a LoRA adapter or stored quantized: `lima_jax.lora`)."""
    if isinstance(weight, nnx.Variable):
        weight = weight.get_value()
    if hasattr(weight, "project"):
        return weight.project(spec, x, key)
    return weight_product(spec, x, weight.astype(x.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def weight_product(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """`jnp.einsum(spec, x, w)` whose gradients are the two einsums written below. JAX's own rule computes
    a weight's gradient as (cotangent x input), in the output's axes then the input's, and transposes the
    result; XLA:CPU then writes each product's cotangent transposed in memory before the matmul. Taken
    as einsums in the weight's own axis order, with the head's, the same arithmetic trains about 20%
    faster at the bench's ci shape (`python -m lima_jax.bench --config=tiny --shape=ci`, README "Speed")."""
    return jnp.einsum(spec, x, w)


def _weight_product_forward(spec: str, x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return jnp.einsum(spec, x, w), (x, w)


def _weight_product_backward(spec: str, saved: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = saved
    operands, out = spec.split("->")
    x_axes, w_axes = operands.split(",")
    return jnp.einsum(f"{out},{w_axes}->{x_axes}", dy, w), jnp.einsum(f"{x_axes},{out}->{w_axes}", x, dy)


weight_product.defvjp(_weight_product_forward, _weight_product_backward)
