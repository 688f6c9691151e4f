"""`layers.weight_product`: the weight products of the model, with gradients written as einsums in the
weight's own axis order (faster on XLA:CPU); they must be the gradients JAX's own rule gives."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lima_jax.model.layers import weight_product

# The products of llama.py (a layer's, and the float32 head's, own or tied) at small shapes: B 2, T 6, D 8,
# H 4, Dh 4, F 12, V 10.
SPECS = {
    "btd,dv->btv": ((2, 6, 8), (8, 10)),
    "btd,vd->btv": ((2, 6, 8), (10, 8)),
    "btd,dhk->bthk": ((2, 6, 8), (8, 4, 4)),
    "bthk,hkd->btd": ((2, 6, 4, 4), (4, 4, 8)),
    "btd,df->btf": ((2, 6, 8), (8, 12)),
    "btf,fd->btd": ((2, 6, 12), (12, 8)),
}


@pytest.mark.parametrize("spec", sorted(SPECS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_value_and_gradients_are_the_einsums(spec, dtype):
    x_shape, w_shape = SPECS[spec]
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape, dtype)
    w = jax.random.normal(kw, w_shape, dtype)
    out_shape = jax.eval_shape(lambda: jnp.einsum(spec, x, w)).shape
    cotangent = jax.random.normal(kc, out_shape, dtype)

    def loss(product):
        return lambda x, w: jnp.sum(product(x, w).astype(jnp.float32) * cotangent.astype(jnp.float32))

    ours = jax.jit(jax.value_and_grad(loss(lambda x, w: weight_product(spec, x, w)), argnums=(0, 1)))(x, w)
    jax_own = jax.jit(jax.value_and_grad(loss(lambda x, w: jnp.einsum(spec, x, w)), argnums=(0, 1)))(x, w)
    tolerance = {"float32": 1e-5, "bfloat16": 2e-2}[dtype]
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(jax_own)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tolerance, atol=tolerance)
