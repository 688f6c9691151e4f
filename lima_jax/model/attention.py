"""Attention: causal, segment-aware (packed rows stay apart), grouped-query.

`attention` and `cached_attention` write the (B, K, G, T, S) scores out with XLA: they run anywhere, and
decoding against a KV cache always uses them. Training's whole sequences (T queries against the same
T keys) may instead take a fused kernel, `model.attention = auto | xla | splash | cudnn`, which
`resolve` picks (the names and each kernel's shape limits are data in `config.py`, so that a config
is checked without JAX):

- `xla`: `attention`, the score matrix written out, a block of queries at a time against the keys up
  to the block's end (`causal_blocks`).
- `splash`: the Pallas TPU splash-attention kernel, in `shard_map` over batch and heads (XLA's
  partitioner cannot split a Pallas call); on a CPU, Pallas' interpret mode (for tests).
- `cudnn`: cuDNN's flash attention through `jax.nn.dot_product_attention`, with a same-segment mask.
- `auto`: splash on TPU, cudnn on GPU where their shape and dtype limits are met, else xla.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from lima_jax.errors import LimaError
from lima_jax.model.config import ATTENTION_IMPLS, ModelConfig, unsupported  # the kernels' names and limits, as data
from lima_jax.sharding import active_mesh, spec

# What `remat=save_attention` keeps per layer: the rotated q, k, v and the attention output (and the
# splash kernel's log-sum-exp), so the backward pass recomputes only norms, the MLP and the output
# projection, never the attention itself.
ATTENTION_SAVED = ("attention_qkv", "attention")

SPLASH_BLOCKS = (512, 256, 128)  # the largest that divides T is used (MaxText's default is 512)

# Training's xla attention runs in up to 4 query blocks of at least 128 queries (`causal_blocks`): at the
# bench's ci shape (T 512) that made a layer's attention forward and backward 1.7x faster on a CPU, the
# score matrices' elementwise work being most of it; shorter sequences (the tests' tiny runs) stay whole.
CAUSAL_BLOCKS = 4
MIN_CAUSAL_BLOCK = 128


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segments: jax.Array,
    kv_segments: jax.Array,
    q_slots: jax.Array,
) -> jax.Array:
    """Causal, segment-aware grouped-query attention.

    q (B, T, H, Dh); k (B, K, S, Dh); v (B, K, Dh, S), as a KVCache holds them; q_segments (B, T);
    kv_segments (B, S); q_slots (B, T) is each query's slot, and key slot j is visible when
    j <= that slot and the segments match.
    """
    b, t, h, dh = q.shape
    kv_heads, slots = k.shape[1], k.shape[2]
    kv_slots = jnp.arange(slots, dtype=jnp.int32)
    visible = (q_segments[:, :, None] == kv_segments[:, None, :]) & (
        kv_slots[None, None, :] <= q_slots[:, :, None]
    )
    return _masked_attention(q.reshape(b, t, kv_heads, h // kv_heads, dh), k, v, visible).reshape(b, t, h, dh)


def _masked_scores(q: jax.Array, k: jax.Array, visible: jax.Array) -> jax.Array:
    """Scaled scores (B, K, G, T, S) in float32, the invisible ones at the lowest float."""
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) * (1.0 / np.sqrt(q.shape[-1]))
    return jnp.where(visible[:, None, None], scores, jnp.finfo(jnp.float32).min)


@jax.custom_vjp
def _masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(Dh), over the visible slots) v: q (B, T, K, G, Dh), k (B, K, S, Dh),
    v (B, K, Dh, S), visible (B, T, S) -> (B, T, K, G, Dh).

    Its gradient is written out as FlashAttention's (without the tiling): the backward pass keeps
    each row's log-sum-exp, not the (B, K, G, T, S) probabilities autodiff would save, recomputes
    them from the scores, and takes the softmax's gradient as p * (dp - rowsum(dO * O)). On XLA:CPU
    autodiff's form fused that row sum with the dO v^T product into one slow kernel; this one is
    about 8% faster a train step at the bench shape, and saves a (T, S) buffer per head and layer."""
    return _masked_attention_fwd(q, k, v, visible)[0]


def _masked_attention_fwd(q, k, v, visible):
    scores = _masked_scores(q, k, visible)
    top = jnp.max(scores, axis=-1, keepdims=True)
    exp = jnp.exp(scores - top)
    total = jnp.sum(exp, axis=-1, keepdims=True)
    out = jnp.einsum("bkgts,bkds->btkgd", (exp / total).astype(v.dtype), v)
    log_sum_exp = checkpoint_name((top + jnp.log(total))[..., 0], ATTENTION_SAVED[1])  # (B, K, G, T)
    return out, (q, k, v, visible, out, log_sum_exp)


def _masked_attention_bwd(residuals, d_out):
    q, k, v, visible, out, log_sum_exp = residuals
    probs = jnp.exp(_masked_scores(q, k, visible) - log_sum_exp[..., None])
    d_v = jnp.einsum("bkgts,btkgd->bkds", probs.astype(d_out.dtype), d_out)
    d_probs = jnp.einsum("btkgd,bkds->bkgts", d_out, v, preferred_element_type=jnp.float32)
    row = jnp.einsum("btkgd,btkgd->bkgt", d_out.astype(jnp.float32), out.astype(jnp.float32))
    d_scores = (probs * (d_probs - row[..., None]) * (1.0 / np.sqrt(q.shape[-1]))).astype(q.dtype)
    d_q = jnp.einsum("bkgts,bksd->btkgd", d_scores, k)
    d_k = jnp.einsum("bkgts,btkgd->bksd", d_scores, q)
    return d_q, d_k, d_v, None


_masked_attention.defvjp(_masked_attention_fwd, _masked_attention_bwd)


def cached_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    q_segments: jax.Array,
    cache_segments: jax.Array,
    index: jax.Array,
) -> jax.Array:
    """`attention` of T new tokens to the cache's slots before `index` and, causally, to each other,
    reading the cache as it was before their keys and values are written into it.

    q (B, T, H, Dh); the new keys k (B, K, T, Dh) and values v (B, K, Dh, T); the cache's k_cache
    (B, K, S, Dh), v_cache (B, K, Dh, S) and cache_segments (B, S) hold the earlier slots. The same
    scores as `attention` over the written cache, but no read of the written cache: the cache
    update is then the last use of its buffer, which XLA can do in place. `Block.decode` takes it
    for one-token steps only; a prompt reads the written cache once, scoring T x S, not T x (S + T)."""
    b, t, h, dh = q.shape
    kv_heads, slots = k_cache.shape[1], k_cache.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, dh)
    earlier = (q_segments[:, :, None] == cache_segments[:, None, :]) & (jnp.arange(slots, dtype=jnp.int32) < index)
    causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
    among_new = (q_segments[:, :, None] == q_segments[:, None, :]) & causal
    scores = jnp.concatenate([_masked_scores(q, k_cache, earlier), _masked_scores(q, k, among_new)], axis=-1)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)  # (B, K, G, T, S + T)
    spec = "bkgts,bkds->btkgd"
    out = jnp.einsum(spec, probs[..., :slots], v_cache) + jnp.einsum(spec, probs[..., slots:], v)
    return out.reshape(b, t, h, dh)



def self_attention(cfg: ModelConfig, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Training's attention: each token of the rows to the earlier tokens of its own segment (slot =
    position in the row), by `cfg.attention`'s kernel. q (B, T, H, Dh); keys (B, K, T, Dh) and values
    (B, K, Dh, T), as a KVCache holds them. Returns (B, T, H, Dh)."""
    impl = resolve(cfg.attention, q.shape[1], cfg.resolved_head_dim, cfg.dtype)
    if impl == "xla":
        return causal_blocks(q, k, v, segment_ids)
    # the kernels take keys and values (B, T, K, Dh), as projected
    return attend(impl, q, k.transpose(0, 2, 1, 3), v.transpose(0, 3, 1, 2), segment_ids)


def causal_block_count(length: int) -> int:
    """How many query blocks `causal_blocks` splits a sequence into: up to CAUSAL_BLOCKS, each of at
    least MIN_CAUSAL_BLOCK queries, dividing `length`; 1 (no split) for short sequences."""
    n = min(CAUSAL_BLOCKS, length // MIN_CAUSAL_BLOCK)
    while n > 1 and length % n:
        n -= 1
    return max(n, 1)


def causal_blocks(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """`attention` of whole sequences (slot = position in the row), a block of queries at a time, each
    block against only the keys up to its own end: the keys after it are masked for all its queries, so
    their scores, exponentials and gradients need not be computed (with 4 blocks, 10 of the 16 query x
    key blocks are). Each query's softmax runs over the same visible keys as unsplit; only the order of
    the sums differs. q (B, T, H, Dh), k (B, K, T, Dh), v (B, K, Dh, T), segment_ids (B, T)."""
    t = q.shape[1]
    slots = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids.shape)
    n = causal_block_count(t)
    c = t // n
    blocks = []
    for i in range(n):
        queries, end = slice(i * c, (i + 1) * c), (i + 1) * c
        blocks.append(attention(q[:, queries], k[:, :, :end], v[..., :end], segment_ids[:, queries],
                                segment_ids[:, :end], slots[:, queries]))
    return blocks[0] if n == 1 else jnp.concatenate(blocks, axis=1)


def platform() -> str:
    """Where the step runs: the active mesh's devices (a TPU topology when compiling ahead of time on
    a CPU host), else JAX's default backend."""
    mesh = active_mesh()
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def resolve(impl: str, seq_len: int, head_dim: int, dtype: str, where: str | None = None) -> str:
    """The kernel to run: `auto` picks per platform (falling back to xla where the kernel's limits are
    not met); an explicit choice that cannot run these shapes is a LimaError."""
    if impl not in ATTENTION_IMPLS:
        raise LimaError(f"model.attention must be one of {', '.join(ATTENTION_IMPLS)}, got {impl!r}")
    if impl == "auto":
        choice = {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(where or platform(), "xla")
        return "xla" if unsupported(choice, seq_len, head_dim, dtype) else choice
    problem = unsupported(impl, seq_len, head_dim, dtype)
    if problem:
        raise LimaError(problem)
    return impl


def attend(impl: str, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Causal, segment-aware grouped-query self-attention with a fused kernel.

    q (B, T, H, Dh); k and v (B, T, K, Dh); segment_ids (B, T). Returns (B, T, H, Dh) in q's dtype.
    """
    if impl == "splash":
        return splash(q, k, v, segment_ids)
    if impl == "cudnn":
        return dot_product(q, k, v, segment_ids, implementation="cudnn")
    raise ValueError(f"no fused attention kernel named {impl!r}")


def dot_product(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, implementation: str) -> jax.Array:
    """`jax.nn.dot_product_attention` in its (B, T, N, H) layout: causal, and a query sees only the
    keys of its own segment (a boolean (B, 1, T, T) mask, broadcast over heads)."""
    same_segment = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=same_segment, is_causal=True, implementation=implementation)


def splash(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """The splash kernel on each device's share of rows and heads (shard_map), vmapped over rows."""
    b, t, h, dh = q.shape
    q = (q * jnp.asarray(1.0 / np.sqrt(dh), q.dtype)).transpose(0, 2, 1, 3)  # the kernel does not scale
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, K, T, Dh)
    mesh, interpret = active_mesh(), platform() == "cpu"
    if mesh is None:
        return _splash_local(q, k, v, segment_ids, interpret=interpret).transpose(0, 2, 1, 3)
    q_spec = spec(("batch", "heads", "length", "head_dim"), q.shape, mesh)
    kv_spec = spec(("batch", "kv_heads", "length", "head_dim"), k.shape, mesh)
    if kv_spec[1] != q_spec[1]:
        # The KV heads cannot be split like the query heads (e.g. 8 KV heads over tensor=16): give
        # every query head its own copy, so each device holds the KV heads its query heads read.
        k, v = (jnp.repeat(a, h // a.shape[1], axis=1) for a in (k, v))
        kv_spec = q_spec
    seg_spec = jax.sharding.PartitionSpec(q_spec[0], None)
    local = jax.shard_map(
        functools.partial(_splash_local, interpret=interpret),
        mesh=mesh,
        in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
        out_specs=q_spec,
        check_vma=False,
    )
    return local(q, k, v, segment_ids).transpose(0, 2, 1, 3)


def _splash_local(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, interpret: bool) -> jax.Array:
    """q (b, h, T, Dh), k and v (b, kv, T, Dh) on one device -> (b, h, T, Dh)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    heads, t = q.shape[1], q.shape[2]
    block = next(bs for bs in SPLASH_BLOCKS if t % bs == 0)
    blocks = kernel.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )
    causal = masks.MultiHeadMask([masks.CausalMask(shape=(t, t))] * heads)
    # The kernel names its output and log-sum-exp, so `remat=save_attention` keeps them.
    attn = kernel.make_splash_mha(causal, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret,
                                  residual_checkpoint_name=ATTENTION_SAVED[1])
    segments = kernel.SegmentIds(q=segment_ids, kv=segment_ids)
    return jax.vmap(attn)(q, k, v, segment_ids=segments)
