"""`layers.swiglu`: the MLP's gating, silu(gate) * up, whose gradient keeps only its two inputs. It must
give JAX's own values and gradients, and a layer must save three (B, T, F) arrays for its MLP's backward
pass (gate, up and their product), not the six JAX's own rule leaves."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lima_jax.model import Llama
from lima_jax.model.layers import swiglu
from support.models import saved_residuals, tiny


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_value_and_gradients_are_jax_own(dtype):
    kg, ku, kc = jax.random.split(jax.random.key(0), 3)
    gate = jax.random.normal(kg, (2, 5, 12), dtype) * 4
    gate = gate.at[0, 0, :4].set(jnp.asarray([-90.0, -30.0, 30.0, 90.0], dtype))  # the sigmoid saturated
    up = jax.random.normal(ku, (2, 5, 12), dtype)
    cotangent = jax.random.normal(kc, (2, 5, 12), jnp.float32)

    def loss(gating):
        return lambda g, u: jnp.sum(gating(g, u).astype(jnp.float32) * cotangent)

    ours = jax.jit(jax.value_and_grad(loss(swiglu), argnums=(0, 1)))(gate, up)
    jax_own = jax.jit(jax.value_and_grad(loss(lambda g, u: jax.nn.silu(g) * u), argnums=(0, 1)))(gate, up)
    tolerance = {"float32": 1e-5, "bfloat16": 2e-2}[dtype]
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(jax_own)):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.all(np.isfinite(np.asarray(got, np.float32)))
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=tolerance, atol=tolerance * float(np.max(np.abs(np.asarray(want, np.float32)))))


def test_a_layer_saves_three_mlp_sized_arrays_for_its_backward_pass():
    ffn = 24  # unlike every other dim below, so the MLP's residuals are the arrays of this width
    cfg = tiny(dim=16, num_layers=1, num_heads=2, num_kv_heads=2, ffn_dim=ffn, max_len=8)
    layer = Llama(cfg, rngs=nnx.Rngs(0)).decode_blocks()[0]
    x = jax.random.normal(jax.random.key(1), (2, 8, 16))
    positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
    segments = jnp.ones((2, 8), jnp.int32)
    saved = saved_residuals(lambda x: layer(x, positions, segments, jnp.float32(0), None), x)
    mlp_sized = [line for line in saved.splitlines() if line.startswith(f"f32[2,8,{ffn}]")]
    assert len(mlp_sized) == 3, mlp_sized
