"""The QLoRA base storage: int8 and NF4 blocks that round-trip within their bounds, on CPU in seconds."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lima_jax.lora.quantize import BLOCK, NF4, Quantized, quantize

# The NF4 table as bitsandbytes publishes it (bitsandbytes/functional.py, get_4bit_type("nf4"); QLoRA appendix E).
BNB_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
           -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
           0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
           0.7229568362236023, 1.0]


def weights(shape, seed=0):
    """Normal weights whose blocks have very different scales, so a wrong per-block scale shows."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * rng.choice([1e-3, 0.02, 3.0], size=shape[:-1] + (1,))).astype(np.float32)


def reference_blocks(w, lead):
    """numpy: each weight flattened, zero-padded to a multiple of BLOCK, cut into blocks; and each block's absmax."""
    flat = w.reshape(*w.shape[:lead], -1)
    flat = np.concatenate([flat, np.zeros(flat.shape[:-1] + (-flat.shape[-1] % BLOCK,), flat.dtype)], -1)
    blocks = flat.reshape(*flat.shape[:-1], -1, BLOCK)
    return blocks, np.abs(blocks).max(-1)


def test_nf4_table_is_the_published_one():
    np.testing.assert_array_equal(NF4, np.array(BNB_NF4, np.float32))
    if importlib.util.find_spec("bitsandbytes") is not None:
        from bitsandbytes.functional import get_4bit_type
        np.testing.assert_array_equal(NF4, get_4bit_type("nf4", device="cpu").numpy())


def test_int8_round_trip_within_half_a_step_per_block():
    w = weights((3, 8, 96))
    q = quantize(jnp.asarray(w), "int8")
    blocks, absmax = reference_blocks(w, 1)
    assert q.codes.dtype == jnp.int8 and q.codes.shape == (3, 12, BLOCK) and q.scales.shape == (3, 12)
    np.testing.assert_array_equal(q.scales, absmax)
    np.testing.assert_array_equal(q.codes, np.round(blocks / absmax[..., None] * 127))
    error = np.abs(np.asarray(q.dense(jnp.float32)) - w).reshape(3, 12, BLOCK).max(-1)
    assert (error <= absmax / 254 * (1 + 1e-5)).all()


def test_nf4_maps_each_element_to_the_nearest_code():
    w = weights((2, 16, 64))
    q = quantize(jnp.asarray(w), "nf4")
    blocks, absmax = reference_blocks(w, 1)
    normed = blocks / absmax[..., None]
    nearest = np.abs(normed[..., None] - NF4).argmin(-1)  # brute force over the 16 codes
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == (2, 16, BLOCK // 2)
    codes = np.stack([np.asarray(q.codes) >> 4, np.asarray(q.codes) & 15], -1).reshape(nearest.shape)
    np.testing.assert_array_equal(codes, nearest)
    np.testing.assert_allclose(q.dense(jnp.float32), (NF4[nearest] * absmax[..., None]).reshape(w.shape), rtol=1e-6)
    assert len(np.unique(codes)) == 16  # the test reaches every code


def test_padding_of_a_size_not_a_multiple_of_the_block():
    w = weights((2, 5, 7))  # 35 values per weight: one block, 29 of it padding
    for kind in ("int8", "nf4"):
        q = quantize(jnp.asarray(w), kind)
        assert q.shape == (5, 7) and q.scales.shape == (2, 1)
        dense = np.asarray(q.dense(jnp.float32))
        assert dense.shape == w.shape
        np.testing.assert_allclose(dense, w, atol=float(np.abs(w).max()) * (1 / 254 if kind == "int8" else 0.11))
    np.testing.assert_array_equal(quantize(jnp.asarray(w), "int8", lead=0).dense(jnp.float32).shape, w.shape)


def test_all_zero_block_dequantizes_to_zeros():
    w = np.zeros((1, 2 * BLOCK), np.float32)
    w[0, BLOCK:] = np.linspace(-1, 1, BLOCK)  # the first block is all zeros, the second is not
    for kind in ("int8", "nf4"):
        q = quantize(jnp.asarray(w), kind)
        dense = np.asarray(q.dense(jnp.float32))
        assert np.isfinite(dense).all() and (dense[0, :BLOCK] == 0).all()
        assert q.scales[0, 0] == 0 and q.scales[0, 1] == 1
        zero_code = 0 if kind == "int8" else 0x77  # int8 0; NF4 code 7 (0.0) in both nibbles
        assert (np.asarray(q.codes[0, 0]) == zero_code).all()  # codes of 0/0 would be undefined


def test_non_finite_weight_is_refused():
    w = np.ones((2, 70), np.float32)
    w[1, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        quantize(jnp.asarray(w), "nf4")
    with pytest.raises(ValueError, match="'int4'"):
        quantize(jnp.asarray(w), "int4")


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_scan_slice_and_project_match_the_dense_stack(kind):
    w = weights((4, 24, 10), seed=1)  # 240 values: 3 full blocks and a padded one per layer
    q = quantize(jnp.asarray(w), kind)
    stack = q.dense(jnp.float32)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 24)), jnp.float32)

    @jax.jit
    def layers(q, x):
        def layer(carry, qi):
            return carry, (qi.dense(jnp.float32), qi.project("bd,df->bf", x))
        return jax.lax.scan(layer, 0, q)[1]

    per_layer, projected = layers(q, x)
    np.testing.assert_array_equal(per_layer, stack)
    np.testing.assert_allclose(projected, jnp.einsum("bd,ldf->lbf", x, stack), rtol=1e-5, atol=1e-5)
    assert q.dense(jnp.bfloat16).dtype == jnp.bfloat16
    first = jax.tree.map(lambda leaf: leaf[0], q)  # a pytree: kind and shape ride along as static data
    assert isinstance(first, Quantized) and first.kind == kind
    np.testing.assert_array_equal(first.dense(jnp.float32), stack[0])


def test_nbytes():
    n = 4096 * 64  # N values, a multiple of BLOCK
    w = jnp.ones((2, 4096, 64), jnp.float32)
    assert quantize(w, "nf4").nbytes == 2 * (n // 2 + 4 * n // 64)  # 0.5625 bytes per parameter
    assert quantize(w, "int8").nbytes == 2 * (n + 4 * n // 64)
