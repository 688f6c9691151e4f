"""The lean full fine-tune's switches (issue 24 item 5): bf16 parameters updated through a float32 master
copy or by stochastic rounding, and AdamW's moments stored in bf16."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lima_jax.train import optimizer as optim


def _optim(**changes) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"lr": 1e-5, "end_lr": 1e-5, "b1": 0.9, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.0,
                                      "grad_clip": 0.0, "narrow_params": "master", "moments_dtype": "", **changes})


def _steps(optimizer, params, n: int):
    """`n` AdamW steps on the loss sum(params): a constant gradient of ones, so every update is about -lr."""
    def step(carry, _):
        params, state = carry
        grads = jax.tree.map(jnp.ones_like, params)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    return jax.jit(lambda p: jax.lax.scan(step, (p, optimizer.init(p)), None, length=n)[0])(params)


def test_master_weights_keep_the_updates_bf16_rounds_away():
    params = {"w": jnp.ones((4,), jnp.bfloat16)}
    plain, _ = _steps(optim.make_optimizer(_optim(narrow_params="nearest"), 1000, "bfloat16"), params, 1000)
    mixed, state = _steps(optim.make_optimizer(_optim(), 1000, "bfloat16"), params, 1000)
    assert plain["w"].dtype == jnp.bfloat16 and bool((plain["w"] == 1).all())  # each 1e-5 step rounded away
    np.testing.assert_allclose(np.asarray(state.master["w"]), 1 - 1000 * 1e-5, rtol=1e-4)  # 0.99
    assert mixed["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(mixed["w"]), np.asarray(state.master["w"].astype(jnp.bfloat16)))
    # Stochastic rounding, no copy: unbiased on average (4096 weights), each weight a bf16 value.
    many = {"w": jnp.ones((4096,), jnp.bfloat16)}
    rounded, _ = _steps(optim.make_optimizer(_optim(narrow_params="stochastic"), 1000, "bfloat16"), many, 1000)
    assert rounded["w"].dtype == jnp.bfloat16 and len(np.unique(np.asarray(rounded["w"], np.float32))) > 1
    np.testing.assert_allclose(float(np.asarray(rounded["w"], np.float32).mean()), 0.99, atol=1e-3)


def test_float32_parameters_get_no_master_copy_and_narrow_moments_are_bf16():
    params = {"w": jnp.linspace(-1, 1, 8, dtype=jnp.float32)}
    assert not isinstance(optim.make_optimizer(_optim(), 10, "float32").init(params), optim.MasterWeights)
    narrow = optim.make_optimizer(_optim(moments_dtype="bfloat16"), 10)
    moments = [a for a in jax.tree.leaves(narrow.init(params)) if a.shape == (8,)]
    assert moments and all(a.dtype == jnp.bfloat16 for a in moments)
    wide, _ = _steps(optim.make_optimizer(_optim(), 10), params, 10)
    lean, _ = _steps(narrow, params, 10)
    np.testing.assert_allclose(np.asarray(lean["w"]), np.asarray(wide["w"]), atol=1e-7)
