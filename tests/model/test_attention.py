"""`model.attention`: each fused kernel against the XLA path, on packed rows (segment ids, padding)
with grouped-query heads. Splash runs here in Pallas' interpret mode (a CPU has no TPU); cuDNN needs
an NVIDIA GPU and skips without one."""
import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lima_jax import sharding
from lima_jax.config import load_config
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig, model_from_params
from lima_jax.model.attention import attend, attention, causal_block_count, causal_blocks, dot_product, resolve, splash
from support.markers import needs_libtpu
from support.models import forward, random_model, random_tokens, saved_residuals, tiny

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
    # 2 query heads share 1 KV head; 384 = 3 x 128 tokens: a 3 x 3 grid of blocks, the upper ones skipped.
    q, k, v = qkv(2, 384, 2, 1, 128)
    seg = packed_segments(2, 384)
    expected = xla_attention(q, k, v, seg)
    got = jax.jit(splash)(q, k, v, seg)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)
    # Sanity of the reference: the same rows unpacked give different outputs.
    assert float(jnp.abs(xla_attention(q, k, v, jnp.ones_like(seg)) - expected).max()) > 0.1

    grads = jax.jit(jax.grad(weighted_sum(lambda q, k, v: splash(q, k, v, seg)), argnums=(0, 1, 2)))(q, k, v)
    expected_grads = jax.grad(weighted_sum(lambda q, k, v: xla_attention(q, k, v, seg)), argnums=(0, 1, 2))(q, k, v)
    for name, g, e in zip("qkv", grads, expected_grads):
        np.testing.assert_allclose(g, e, atol=1e-4, rtol=1e-4, err_msg=f"d/d{name}")


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


@needs_libtpu
def test_splash_compiles_for_a_tpu_slice_as_one_kernel_per_devices_rows_and_heads():
    """XLA for a v5p-8 slice (libtpu, no TPU needed) with rows over fsdp=2 and heads over tensor=2:
    the program holds the splash kernel, and it sees 2 of the 4 rows and 2 of the 4 heads."""
    script = textwrap.dedent("""
        from lima_jax.train.aot import compile_offline, topology_devices
        compile_offline()
        import jax, jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P
        from lima_jax import sharding
        from lima_jax.model.attention import splash
        mesh = sharding.make_mesh({"fsdp": 2, "tensor": 2}, topology_devices("v5p-8")[1])
        def run(q, k, v, seg):
            with sharding.activation_mesh(mesh):
                return splash(q, k, v, seg)
        rows = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, P("fsdp")))
        kv = rows((4, 256, 2, 128), jnp.bfloat16)
        hlo = jax.jit(run).lower(rows((4, 256, 4, 128), jnp.bfloat16), kv, kv, rows((4, 256), jnp.int32)).compile().as_text()
        print("\\n".join(line.strip() for line in hlo.splitlines() if "tpu_custom_call" in line))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    kernels = r.stdout.strip().splitlines()
    assert len(kernels) == 1 and kernels[0].startswith("%splash_mha_fwd_segmented"), r.stdout[:500]
    assert "bf16[2,2,256,128]" in kernels[0]  # (rows, heads, T, Dh) on one device


def test_the_cudnn_paths_mask_and_layout_give_xla_attention():
    """`dot_product` is what cudnn runs, with JAX's reference implementation in its place (this
    checks the segment mask, causality, GQA and the (B, T, N, H) layout everywhere)."""
    q, k, v = qkv(2, 64, 4, 2, 16)
    seg = packed_segments(2, 64)
    got = dot_product(q, k, v, seg, implementation="xla")
    np.testing.assert_allclose(got, xla_attention(q, k, v, seg), atol=2e-5)


@needs_gpu
def test_cudnn_matches_xla_in_bfloat16():
    q, k, v = qkv(2, 256, 8, 2, 128, dtype=jnp.bfloat16)
    seg = packed_segments(2, 256)
    got = jax.jit(lambda q, k, v: attend("cudnn", q, k, v, seg))(q, k, v)
    np.testing.assert_allclose(np.float32(got), np.float32(xla_attention(q, k, v, seg)), atol=2e-2)


def test_auto_picks_the_platforms_kernel_where_its_limits_are_met():
    pick = resolve
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


def test_save_attention_remat_keeps_the_splash_kernels_residuals_and_the_gradient():
    """`remat=save_attention` keeps q, k, v and the kernel's output and log-sum-exp per layer (so the
    backward pass never reruns attention), where `full` keeps only each layer's input; the gradient
    is the XLA path's without remat."""
    cfg = tiny(dim=256, num_heads=2, num_kv_heads=1, head_dim=128, num_layers=3, max_len=128)
    params = nnx.state(random_model(cfg)).to_pure_dict()
    tokens, seg = random_tokens(cfg, (1, 128)), packed_segments(1, 128)

    def loss(graphdef):
        return lambda state: jnp.mean(nnx.merge(graphdef, state)(tokens, segment_ids=seg)[..., 0] ** 2)

    saved, grads = {}, {}
    for attn, remat in (("xla", "none"), ("splash", "full"), ("splash", "save_attention")):
        graphdef, state = nnx.split(model_from_params(cfg.replace(attention=attn, remat=remat), params))
        saved[remat] = saved_residuals(loss(graphdef), state)
        if remat != "full":  # (test_model checks that full remat keeps the gradient)
            grads[remat] = jax.jit(jax.grad(loss(graphdef)))(state)
    log_sum_exp = "f32[3,1,2,128] output of scan"  # (layers, rows, heads, T): only splash makes it
    assert log_sum_exp in saved["save_attention"] and log_sum_exp not in saved["full"]
    assert "f32[3,1,128,2,128] output of scan" in saved["save_attention"]  # q (layers, rows, T, heads, Dh)
    # Float32 rounding, read against each gradient's largest entry: on an AVX-512 host (2026-12-07) the two
    # paths' sums differed by 1.2e-5 on entries of size 2, past a flat 1e-5.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * float(np.max(np.abs(b)))),
                 grads["save_attention"], grads["none"])


def softmax_attention(q, k, v, segments):
    """The textbook form, differentiated by autodiff: q (B, T, H, Dh), k and v (B, T, K, Dh)."""
    b, t, h, dh = q.shape
    group = h // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(dh)
    visible = (segments[:, :, None] == segments[:, None, :]) & jnp.tril(jnp.ones((t, t), bool))
    probs = jax.nn.softmax(jnp.where(visible[:, None], scores, -jnp.inf), axis=-1)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


def test_the_xla_paths_written_out_gradient_is_autodiffs_of_the_softmax():
    q, k, v = qkv(2, 96, 4, 2, 16)
    segments = packed_segments(2, 96)
    ours, reference = weighted_sum(lambda *a: xla_attention(*a, segments)), weighted_sum(lambda *a: softmax_attention(*a, segments))
    np.testing.assert_allclose(xla_attention(q, k, v, segments), softmax_attention(q, k, v, segments), rtol=1e-5, atol=1e-5)
    for name, got, want in zip("qkv", jax.grad(ours, (0, 1, 2))(q, k, v), jax.grad(reference, (0, 1, 2))(q, k, v)):
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(got, want, atol=1e-5 * scale, err_msg=f"d{name}")


@pytest.mark.parametrize("t, blocks", [(512, 4), (384, 3), (200, 1)])
def test_training_attention_in_causal_query_blocks_is_the_whole_sequences(t, blocks):
    """Each block of queries against the keys up to its end: the textbook softmax's values and gradients
    over packed rows (three examples and padding; two examples) with grouped-query heads."""
    assert causal_block_count(t) == blocks
    q, k, v = qkv(2, t, 4, 2, 16)
    segments = packed_segments(2, t)
    blocked = lambda q, k, v: causal_blocks(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 3, 1), segments)  # noqa: E731
    whole = lambda q, k, v: softmax_attention(q, k, v, segments)  # noqa: E731
    np.testing.assert_allclose(jax.jit(blocked)(q, k, v), whole(q, k, v), rtol=1e-5, atol=1e-5)
    got = jax.jit(jax.grad(weighted_sum(blocked), (0, 1, 2)))(q, k, v)
    for name, g, want in zip("qkv", got, jax.grad(weighted_sum(whole), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g, want, atol=1e-5 * float(jnp.max(jnp.abs(want))), err_msg=f"d{name}")


def test_xla_training_keeps_each_rows_log_sum_exp_not_the_attention_probabilities():
    """Autodiff of the softmax kept a (T, S) probability matrix per head and layer for the backward
    pass; the written-out gradient keeps one log-sum-exp per query row instead."""
    cfg = tiny(dim=64, num_heads=4, num_kv_heads=2, num_layers=3, max_len=64, attention="xla")
    model = random_model(cfg)
    tokens, seg = random_tokens(cfg, (2, 64)), packed_segments(2, 64)
    graphdef, state = nnx.split(model)
    saved = saved_residuals(lambda state: jnp.mean(nnx.merge(graphdef, state)(tokens, segment_ids=seg)[..., 0] ** 2), state)
    assert "f32[3,2,2,2,64] output of scan" in saved  # log-sum-exp (layers, rows, K, G, T)
    assert "f32[3,2,2,2,64,64]" not in saved  # probabilities (layers, rows, K, G, T, S)
