"""Fused attention kernels for training (whole sequences: T queries against the same T keys,
causal, packed rows kept apart by segment ids): `model.attention = auto | xla | splash | cudnn`.

- `xla`: `lima_jax.model.attention`, the (B, K, G, T, S) score matrix written out; runs anywhere.
- `splash`: the Pallas TPU splash-attention kernel (blockwise, nothing T x T in HBM), wrapped in
  `shard_map` over the batch and head axes as MaxText does, since a Pallas call cannot be split by
  XLA's partitioner. On a CPU it runs in Pallas' interpret mode (slow; for tests).
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's flash attention on NVIDIA
  GPUs, with a (B, 1, T, T) same-segment mask beside `is_causal`. JAX gives it a custom partitioning
  rule (batch and heads), so it needs no shard_map.
- `auto`: splash on TPU, cudnn on GPU where their shape and dtype limits are met, else xla.

Decoding (a KV cache with more slots than new tokens) always uses `xla`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lima_jax.errors import LimaError
from lima_jax.sharding import active_mesh, spec

# What `remat=save_attention` keeps per layer: the rotated q, k, v and the attention output (and the
# splash kernel's log-sum-exp), so the backward pass recomputes only norms, the MLP and the output
# projection, never the attention itself.
ATTENTION_SAVED = ("attention_qkv", "attention")

ATTENTION_IMPLS = ("auto", "xla", "splash", "cudnn")
SPLASH_MULTIPLE = 128  # splash tiles the sequence and the head dim by 128 lanes
SPLASH_BLOCKS = (512, 256, 128)  # the largest that divides T is used (MaxText's default is 512)
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128


def platform() -> str:
    """Where the step runs: the active mesh's devices (a TPU topology when compiling ahead of time on
    a CPU host), else JAX's default backend."""
    mesh = active_mesh()
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def unsupported(impl: str, seq_len: int, head_dim: int, dtype: str) -> str | None:
    """Why `impl` cannot run these shapes (one line), or None when it can."""
    if impl == "splash" and (seq_len % SPLASH_MULTIPLE or head_dim % SPLASH_MULTIPLE):
        return (f"model.attention=splash needs the sequence length and head dim to be multiples of "
                f"{SPLASH_MULTIPLE}, got {seq_len} and {head_dim}")
    if impl == "cudnn" and (dtype not in CUDNN_DTYPES or head_dim > CUDNN_MAX_HEAD_DIM or head_dim % 8):
        return (f"model.attention=cudnn needs model.dtype in {', '.join(CUDNN_DTYPES)} and a head dim that is a "
                f"multiple of 8 up to {CUDNN_MAX_HEAD_DIM}, got {dtype} and {head_dim}")
    return None


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
