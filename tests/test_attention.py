"""`model.attention`: each fused kernel against the XLA path, on packed rows (segment ids, padding)
with grouped-query heads. Splash runs here in Pallas' interpret mode (a CPU has no TPU); cuDNN needs
an NVIDIA GPU and skips without one."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lima_jax import sharding
from lima_jax.config import load_config
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig, attention, model_from_params
from lima_jax.train import fused_attention
from test_model import forward, random_model, random_tokens, tiny

needs_gpu = pytest.mark.skipif(
    jax.default_backend() != "gpu", reason=f"cuDNN attention needs an NVIDIA GPU (this backend is {jax.default_backend()})"
)


def packed_segments(batch: int, t: int) -> jax.Array:
    """Row 0: three examples then padding (segment 0); row 1: two examples filling the row."""
    seg = np.ones((batch, t), np.int32)
    seg[0, t // 3 :], seg[0, t // 2 :], seg[0, t - 17 :] = 2, 3, 0
    seg[1:, t // 5 :] = 2
    return jnp.asarray(seg)


def qkv(b: int, t: int, h: int, kv: int, dh: int, dtype=jnp.float32, seed: int = 0):
    """q (B, T, H, Dh) and keys and values (B, T, K, Dh) scaled so the softmax is far from uniform."""
    r = np.random.default_rng(seed)
    return tuple(jnp.asarray(3 * r.standard_normal((b, t, n, dh)), dtype) for n in (h, kv, kv))


def xla_attention(q, k, v, segments):
    """The model's own path: keys (B, K, S, Dh) and values (B, K, Dh, S) as the cache holds them."""
    slots = jnp.broadcast_to(jnp.arange(q.shape[1]), segments.shape)
    return attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 3, 1), segments, segments, slots)


def weighted_sum(fn):
    """A scalar of the attention output that weights every element differently (for gradients)."""
    return lambda q, k, v: jnp.sum(fn(q, k, v) * jnp.cos(jnp.arange(q.shape[-1], dtype=jnp.float32)))


def test_splash_matches_xla_on_packed_rows_with_grouped_query_heads_forward_and_backward():
    q, k, v = qkv(2, 256, 4, 2, 128)
    seg = packed_segments(2, 256)
    expected = xla_attention(q, k, v, seg)
    got = jax.jit(fused_attention.splash)(q, k, v, seg)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)
    # Sanity of the reference: the same rows unpacked give different outputs.
    assert float(jnp.abs(xla_attention(q, k, v, jnp.ones_like(seg)) - expected).max()) > 0.1

    grads = jax.jit(jax.grad(weighted_sum(lambda q, k, v: fused_attention.splash(q, k, v, seg)), argnums=(0, 1, 2)))(q, k, v)
    expected_grads = jax.grad(weighted_sum(lambda q, k, v: xla_attention(q, k, v, seg)), argnums=(0, 1, 2))(q, k, v)
    for name, g, e in zip("qkv", grads, expected_grads):
        np.testing.assert_allclose(g, e, atol=1e-4, err_msg=f"d/d{name}")


@pytest.mark.parametrize("kv_heads", [2, 1])  # 1 KV head cannot split over tensor=2: it is repeated
def test_splash_model_on_a_mesh_gives_xla_logits(kv_heads):
    """The whole model under jit on a (data 2, fsdp 2, tensor 2) mesh: splash runs in shard_map on
    each device's rows and heads and gives the logits of the XLA path."""
    cfg = tiny(dim=256, num_heads=2, num_kv_heads=kv_heads, head_dim=128, num_layers=2, max_len=128)
    params = nnx.state(random_model(cfg)).to_pure_dict()
    tokens = random_tokens(cfg, (4, 128))
    seg = packed_segments(4, 128)
    positions = jnp.broadcast_to(jnp.arange(128), (4, 128))  # restarting them per segment is not the point here
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])

    def logits(impl):
        model = model_from_params(cfg.replace(attention=impl), params)
        with sharding.activation_mesh(mesh):
            return forward(model, tokens, positions, seg)

    np.testing.assert_allclose(logits("splash"), logits("xla"), atol=2e-4)


def test_the_cudnn_paths_mask_and_layout_give_xla_attention():
    """`dot_product` is what cudnn runs, with JAX's reference implementation in its place (this
    checks the segment mask, causality, GQA and the (B, T, N, H) layout everywhere)."""
    q, k, v = qkv(2, 64, 4, 2, 16)
    seg = packed_segments(2, 64)
    got = fused_attention.dot_product(q, k, v, seg, implementation="xla")
    np.testing.assert_allclose(got, xla_attention(q, k, v, seg), atol=2e-5)


@needs_gpu
def test_cudnn_matches_xla_in_bfloat16():
    q, k, v = qkv(2, 256, 8, 2, 128, dtype=jnp.bfloat16)
    seg = packed_segments(2, 256)
    got = jax.jit(lambda q, k, v: fused_attention.attend("cudnn", q, k, v, seg))(q, k, v)
    np.testing.assert_allclose(np.float32(got), np.float32(xla_attention(q, k, v, seg)), atol=2e-2)


def test_auto_picks_the_platforms_kernel_where_its_limits_are_met():
    pick = fused_attention.resolve
    assert pick("auto", 2048, 128, "bfloat16", where="tpu") == "splash"
    assert pick("auto", 2048, 128, "bfloat16", where="gpu") == "cudnn"
    assert pick("auto", 2048, 128, "bfloat16", where="cpu") == "xla"
    assert pick("auto", 128, 8, "float32", where="tpu") == "xla"  # splash tiles Dh and T by 128
    assert pick("auto", 2048, 128, "float32", where="gpu") == "xla"  # cuDNN runs half precision only
    with pytest.raises(LimaError, match="splash needs the sequence length and head dim to be multiples of 128, got 100 and 128"):
        pick("splash", 100, 128, "float32", where="tpu")


def test_config_rejects_an_unknown_or_unsuitable_kernel_in_one_line():
    with pytest.raises(LimaError, match=r"^config key model.attention: must be one of auto, xla, splash, cudnn, got 'flash'$"):
        load_config("tiny", {"model.attention": "flash"})
    with pytest.raises(LimaError, match=r"^config key model.attention: needs .* multiples of 128, got 128 and 8$"):
        load_config("tiny", {"model.attention": "splash"})  # tiny's head dim is 64 / 8 = 8
    with pytest.raises(LimaError, match=r"^config key model.attention: needs model.dtype in bfloat16, float16"):
        load_config("tiny", {"model.attention": "cudnn"})
    assert load_config("65b", {"model.attention": "splash"}).model.attention == "splash"


def test_a_model_config_saved_before_the_key_existed_loads_as_auto():
    values = json.loads(ModelConfig().to_json())
    del values["attention"]
    assert ModelConfig.from_dict(values).attention == "auto"
