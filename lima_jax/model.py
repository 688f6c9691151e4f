"""The LLaMA decoder in Flax NNX: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Shapes: B batch, T query tokens, S key slots, D model dim, H query heads, K key/value heads,
Dh head dim, F hidden MLP dim, V vocabulary, L layers.

Every parameter carries logical axis names (`sharding_names`), which a rules table maps onto a
device mesh; the model itself never names a mesh axis. The layers' parameters are stacked along a
leading `layers` axis and run with `lax.scan`, so compile time does not grow with depth.

Residual dropout follows LIMA: each residual branch (attention output, MLP output) is dropped out
before it is added back, at a rate rising linearly from 0.0 at the bottom layer to
`residual_dropout` at the top one.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lima_jax.sharding import constrain, tree_shardings

ACTIVATION_AXES = ("batch", "length", "act_embed")  # the residual stream's logical axes
REMAT_POLICIES = ("none", "full", "save_dots")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture, plus how it is computed (dtypes, scan, remat) and regularised (dropout)."""

    vocab_size: int = 32000
    dim: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 0  # 0 means dim // num_heads
    ffn_dim: int = 11008
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    max_len: int = 2048
    tie_embeddings: bool = False
    bos_id: int = 1
    eos_id: int = 2
    residual_dropout: float = 0.2  # the rate at the top layer; 0.0 at the bottom, linear between
    scan_layers: bool = True
    remat: str = "none"  # none | full | save_dots (keep matmul outputs, recompute the rest)
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; norms, softmax and logits stay in float32
    init_std: float = 0.02

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.dim // self.num_heads

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            from lima_jax.errors import LimaError

            raise LimaError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**values)


def dropout_rates(num_layers: int, top_rate: float) -> np.ndarray:
    """LIMA's residual dropout schedule: 0.0 at the bottom layer, `top_rate` at the top, linear."""
    return np.linspace(0.0, top_rate, num_layers, dtype=np.float32)


class KVCache(NamedTuple):
    """Keys and values of every layer for `S` slots, with each slot's segment id.

    Slot `j` holds the token written at step `j`; segment id 0 marks padding and empty slots, so a
    real token (segment >= 1) never attends to them. `index` is the next slot to write. Each layer
    has its own arrays (a step updates them in place, never slicing a stacked cache). Keys are laid
    out (B, K, S, Dh) and values (B, K, Dh, S): both attention products then contract their minor
    dimension, and XLA reads the cache as it lies instead of transposing a copy every step. A batch
    of one is stored without its batch axis: XLA would fold that axis away with a reshape of the
    freshly updated cache, and on a CPU that costs a copy of the whole cache every step.
    """

    k: tuple[jax.Array, ...]  # L arrays (B, K, S, Dh), or (K, S, Dh) when B is 1
    v: tuple[jax.Array, ...]  # L arrays (B, K, Dh, S), or (K, Dh, S)
    segment_ids: jax.Array  # (B, S) int32
    index: jax.Array  # () int32

    K_AXES = ("batch", "kv_heads", "length", "head_dim")  # logical names, as for parameters
    V_AXES = ("batch", "kv_heads", "head_dim", "length")

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, max_len: int) -> "KVCache":
        kv, dh, dtype = cfg.num_kv_heads, cfg.resolved_head_dim, jnp.dtype(cfg.dtype)
        rows = 1 if batch == 1 else 0  # the leading axes to drop

        def layers(shape, names):
            return tuple(constrain(jnp.zeros(shape[rows:], dtype), names[rows:]) for _ in range(cfg.num_layers))

        return cls(
            k=layers((batch, kv, max_len, dh), cls.K_AXES),
            v=layers((batch, kv, dh, max_len), cls.V_AXES),
            segment_ids=constrain(jnp.zeros((batch, max_len), jnp.int32), ("batch", "length")),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k[0].shape[-2]


def _param(rngs: nnx.Rngs, init, shape: tuple[int, ...], names: tuple[str, ...], dtype) -> nnx.Param:
    # eager_sharding=False: the names are metadata here; placement on a mesh happens in sharding.py.
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=names, eager_sharding=False)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32, as Hugging Face's LlamaRMSNorm does, cast back to x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (scale.astype(x.dtype) * normed.astype(x.dtype)).astype(x.dtype)


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding in the "rotate-half" layout: x (B, T, heads, Dh), positions (B, T)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (np.arange(0, half, dtype=np.float32) * 2.0 / x.shape[-1]))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, Dh/2)
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segments: jax.Array,
    kv_segments: jax.Array,
    q_slots: jax.Array,
) -> jax.Array:
    """Causal, segment-aware grouped-query attention.

    q (B, T, H, Dh); k (B, K, S, Dh); v (B, K, Dh, S) (for B = 1 also (K, S, Dh) and (K, Dh, S), as
    a KVCache holds them); q_segments (B, T); kv_segments (B, S); q_slots (B, T) is
    each query's slot, and key slot j is visible when j <= that slot and the segments match.
    """
    b, t, h, dh = q.shape
    squeezed = k.ndim == 3  # a batch of one without its batch axis: einsums that never reshape the cache
    kv_heads, slots = k.shape[-3], k.shape[-2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, dh)
    if squeezed:
        scores = jnp.einsum("tkgd,ksd->kgts", q[0], k, preferred_element_type=jnp.float32)[None]
    else:
        scores = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / np.sqrt(dh))
    kv_slots = jnp.arange(slots, dtype=jnp.int32)
    visible = (q_segments[:, :, None] == kv_segments[:, None, :]) & (
        kv_slots[None, None, :] <= q_slots[:, :, None]
    )
    scores = jnp.where(visible[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if squeezed:
        out = jnp.einsum("kgts,kds->tkgd", probs[0], v)[None]
    else:
        out = jnp.einsum("bkgts,bkds->btkgd", probs, v)
    return out.reshape(b, t, h, dh)


def residual_dropout(x: jax.Array, rate: jax.Array, key: jax.Array | None) -> jax.Array:
    """Inverted dropout with a traced rate (it differs per layer); a no-op without a key."""
    if key is None:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class Block(nnx.Module):
    """One decoder layer. Built with `stack=(L,)` it holds the parameters of all L layers stacked;
    `Llama` then runs it one layer slice at a time under `lax.scan`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, stack: tuple[int, ...] = ()):
        self.cfg = cfg
        d, h, kv, dh, f = cfg.dim, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim, cfg.ffn_dim
        lyr = ("layers",) * len(stack)
        normal = jax.nn.initializers.normal(cfg.init_std)
        ones = jax.nn.initializers.ones
        pd = jnp.dtype(cfg.param_dtype)
        self.attn_norm = _param(rngs, ones, (*stack, d), (*lyr, "norm"), pd)
        self.wq = _param(rngs, normal, (*stack, d, h, dh), (*lyr, "embed", "heads", "head_dim"), pd)
        self.wk = _param(rngs, normal, (*stack, d, kv, dh), (*lyr, "embed", "kv_heads", "head_dim"), pd)
        self.wv = _param(rngs, normal, (*stack, d, kv, dh), (*lyr, "embed", "kv_heads", "head_dim"), pd)
        self.wo = _param(rngs, normal, (*stack, h, dh, d), (*lyr, "heads", "head_dim", "embed"), pd)
        self.mlp_norm = _param(rngs, ones, (*stack, d), (*lyr, "norm"), pd)
        self.w_gate = _param(rngs, normal, (*stack, d, f), (*lyr, "embed", "mlp"), pd)
        self.w_up = _param(rngs, normal, (*stack, d, f), (*lyr, "embed", "mlp"), pd)
        self.w_down = _param(rngs, normal, (*stack, f, d), (*lyr, "mlp", "embed"), pd)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        q_segments: jax.Array,
        kv_segments: jax.Array,
        q_slots: jax.Array,
        cache: tuple[jax.Array, jax.Array] | None,
        write_index: jax.Array | None,
        dropout_rate: jax.Array,
        dropout_key: jax.Array | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """One layer on x (B, T, D). `cache` is this layer's (keys, values), (B, K, S, Dh) each, or
        None in training; the new keys/values are written at slot `write_index`, then attention
        reads all slots."""
        cfg, dt = self.cfg, x.dtype
        attn_key = mlp_key = None
        if dropout_key is not None:
            attn_key, mlp_key = jax.random.split(dropout_key)

        h = rms_norm(x, self.attn_norm[...], cfg.norm_eps)
        q, k, v = self._qkv(h)
        q, k = rotary(q, positions, cfg.rope_theta), rotary(k, positions, cfg.rope_theta)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 3, 1)  # (B, K, T, Dh), (B, K, Dh, T): the cache's layout
        if cache is not None:  # decoding: write this step's keys/values, then attend to every slot
            if cache[0].ndim == 3:  # a batch of one (see KVCache)
                k, v = k[0], v[0]
            k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), write_index, axis=k.ndim - 2)
            v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), write_index, axis=v.ndim - 1)
            cache = (k, v)
        out = attention(q, k.astype(dt), v.astype(dt), q_segments, kv_segments, q_slots)
        out = jnp.einsum("bthk,hkd->btd", out, self.wo[...].astype(dt))
        x = x + residual_dropout(out, dropout_rate, attn_key)

        h = rms_norm(x, self.mlp_norm[...], cfg.norm_eps)
        gate, up = self._gate_up(h)
        out = jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, self.w_down[...].astype(dt))
        x = x + residual_dropout(out, dropout_rate, mlp_key)
        return constrain(x, ACTIVATION_AXES), cache


    def _qkv(self, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q (B, T, H, Dh), k and v (B, T, K, Dh): three matmuls, or one when fused."""
        dt = h.dtype
        if not hasattr(self, "wqkv"):
            return tuple(jnp.einsum("btd,dhk->bthk", h, w[...].astype(dt)) for w in (self.wq, self.wk, self.wv))
        cfg = self.cfg
        heads, kv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
        qkv = jnp.einsum("btd,dn->btn", h, self.wqkv[...].astype(dt))
        q, k, v = jnp.split(qkv, [heads * dh, (heads + kv) * dh], axis=-1)
        return q.reshape(*h.shape[:2], heads, dh), k.reshape(*h.shape[:2], kv, dh), v.reshape(*h.shape[:2], kv, dh)

    def _gate_up(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        dt = h.dtype
        if not hasattr(self, "w_gate_up"):
            return tuple(jnp.einsum("btd,df->btf", h, w[...].astype(dt)) for w in (self.w_gate, self.w_up))
        return tuple(jnp.split(jnp.einsum("btd,df->btf", h, self.w_gate_up[...].astype(dt)), 2, axis=-1))

    def fuse_projections(self) -> None:
        """For inference on one device: the q, k, v weights as one (D, (H + 2K) * Dh) matrix and gate
        and up as one (D, 2F). A decode step then runs fewer, larger matmuls; on a CPU each small
        matrix-vector product pays a fixed cost, and wider ones stream memory faster. (Under tensor
        parallelism the fused columns would not split by head: keep them apart there.)"""
        if hasattr(self, "wqkv"):
            return
        d = self.cfg.dim
        self.wqkv = nnx.Param(jnp.concatenate([w[...].reshape(d, -1) for w in (self.wq, self.wk, self.wv)], axis=-1))
        self.w_gate_up = nnx.Param(jnp.concatenate([self.w_gate[...], self.w_up[...]], axis=-1))
        for name in ("wq", "wk", "wv", "w_gate", "w_up"):
            delattr(self, name)


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
    if policy == "save_dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    raise ValueError(f"model.remat must be one of {REMAT_POLICIES}, got {policy!r}")


class Llama(nnx.Module):
    """A LLaMA-architecture decoder-only language model."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        normal = jax.nn.initializers.normal(cfg.init_std)
        self.embed = _param(rngs, normal, (cfg.vocab_size, cfg.dim), ("vocab", "embed"), pd)
        self.layers = Block(cfg, rngs=rngs, stack=(cfg.num_layers,))
        self.norm = _param(rngs, jax.nn.initializers.ones, (cfg.dim,), ("norm",), pd)
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs, normal, (cfg.dim, cfg.vocab_size), ("embed", "vocab"), pd)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        *,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Logits (B, T, V) in float32 for tokens (B, T).

        Packed rows pass `segment_ids` (1, 2, ... per example, 0 for padding) and `positions` that
        restart at each example; tokens attend only within their own segment. Residual dropout is
        applied only when `dropout_rng` is given (training), never at inference.
        """
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        slots = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        x, _ = self._run_layers(self._embed(tokens), positions, segment_ids, segment_ids, slots, None, None, dropout_rng)
        return self._logits(x)

    def decode(
        self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """Runs T new tokens (a prompt, or one sampled token) against the cache; returns their
        logits (B, T, V) and the cache with their keys and values written at `cache.index`."""
        t = tokens.shape[1]
        if t > cache.max_len:
            raise ValueError(f"{t} tokens do not fit a KV cache of {cache.max_len} slots")
        kv_segments = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids, segment_ids, cache.index, axis=1)
        slots = cache.index + jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), tokens.shape)
        x, (k, v) = self._run_layers(
            self._embed(tokens), positions, segment_ids, kv_segments, slots, (cache.k, cache.v), cache.index, None
        )
        k = tuple(constrain(a, KVCache.K_AXES[-a.ndim:]) for a in k)
        v = tuple(constrain(a, KVCache.V_AXES[-a.ndim:]) for a in v)
        return self._logits(x), KVCache(k, v, kv_segments, cache.index + t)

    def _embed(self, tokens: jax.Array) -> jax.Array:
        return constrain(jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.dtype), ACTIVATION_AXES)

    def _logits(self, x: jax.Array) -> jax.Array:
        x = rms_norm(x, self.norm[...], self.cfg.norm_eps)
        if self.cfg.tie_embeddings:
            logits = jnp.einsum("btd,vd->btv", x, self.embed[...].astype(x.dtype), preferred_element_type=jnp.float32)
        else:
            logits = jnp.einsum("btd,dv->btv", x, self.lm_head[...].astype(x.dtype), preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"))

    def unstack_layers(self, fuse_projections: bool = True) -> None:
        """Holds each layer's parameters in arrays of its own (an `nnx.List` of Blocks) rather than
        stacked along a layer axis, for inference: a decode step then reads every weight where it
        lies, where slicing a stacked array would copy it (XLA on a CPU does, every step). Converts
        one tensor name at a time, so memory grows by one stacked tensor at most. With
        `fuse_projections` each Block also fuses its projections (`Block.fuse_projections`)."""
        if isinstance(self.layers, nnx.List):
            return
        stacked = self.layers
        gdef, abstract = nnx.split(nnx.eval_shape(lambda: Block(self.cfg, rngs=nnx.Rngs(0))))
        per_layer: list[dict] = [{} for _ in range(self.cfg.num_layers)]
        for name in list(nnx.to_pure_dict(nnx.state(stacked))):
            array = getattr(stacked, name)[...]
            for i, layer in enumerate(per_layer):
                layer[name] = array[i]
            delattr(stacked, name)  # the stacked tensor is freed once its slices exist
            del array
        blocks = []
        for layer in per_layer:
            state = jax.tree.map(lambda a: a, abstract)
            nnx.replace_by_pure_dict(state, layer)
            blocks.append(nnx.merge(gdef, state))
            if fuse_projections:
                blocks[-1].fuse_projections()
        self.layers = nnx.List(blocks)

    def _run_layers(self, x, positions, q_segments, kv_segments, q_slots, cache, write_index, dropout_rng):
        """The layers in order: under `lax.scan` over the stacked parameters, unrolled when the
        config asks or the layers are unstacked, and always unrolled to decode (`cache` given, a
        tuple of per-layer keys and values), so each layer's cache is its own buffer."""
        cfg = self.cfg
        rates = jnp.asarray(dropout_rates(cfg.num_layers, cfg.residual_dropout))
        keys = None if dropout_rng is None else jax.random.split(dropout_rng, cfg.num_layers)
        if isinstance(self.layers, nnx.List):
            graphdef = nnx.split(self.layers[0])[0]
            layer_params = [nnx.state(block) for block in self.layers]
        else:
            graphdef, stacked = nnx.split(self.layers)
            unroll = cache is not None or not cfg.scan_layers
            layer_params = [jax.tree.map(lambda a: a[i], stacked) for i in range(cfg.num_layers)] if unroll else None

        def one_layer(x, per_layer):
            params, layer_kv, rate, key = per_layer
            block = nnx.merge(graphdef, params)
            return block(x, positions, q_segments, kv_segments, q_slots, layer_kv, write_index, rate, key)

        if cache is not None:
            new_k, new_v = [], []
            for i, params in enumerate(layer_params):
                x, (k, v) = one_layer(x, (params, (cache[0][i], cache[1][i]), rates[i], None))
                new_k.append(k)
                new_v.append(v)
            return x, (tuple(new_k), tuple(new_v))
        one_layer = _remat(one_layer, cfg.remat)
        if layer_params is None:
            return jax.lax.scan(one_layer, x, (stacked, None, rates, keys))
        for i, params in enumerate(layer_params):
            x, _ = one_layer(x, (params, None, rates[i], None if keys is None else keys[i]))
        return x, None


def param_count(cfg: ModelConfig) -> int:
    """The number of parameters, from the config alone."""
    d, f, kv_dim = cfg.dim, cfg.ffn_dim, cfg.num_kv_heads * cfg.resolved_head_dim
    q_dim = cfg.num_heads * cfg.resolved_head_dim
    per_layer = 2 * d + d * q_dim + 2 * d * kv_dim + q_dim * d + 3 * d * f
    heads = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return cfg.num_layers * per_layer + heads + d


def abstract_model(cfg: ModelConfig) -> Llama:
    """The model with shapes and dtypes only: nothing allocated (for AOT compiles and restores)."""
    return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))


def logical_axes(cfg: ModelConfig) -> dict:
    """Each parameter's logical axis names, e.g. {'embed': ('vocab', 'embed'), ...}."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(abstract_model(cfg))))
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> dict:
    """Each parameter's NamedSharding on `mesh`, by the rules table (`sharding.py`)."""
    abstract = nnx.to_pure_dict(nnx.state(abstract_model(cfg)))
    return tree_shardings(logical_axes(cfg), abstract, mesh)


def model_from_params(cfg: ModelConfig, params: dict) -> Llama:
    """A model holding `params`, a nested dict shaped like `nnx.state(model).to_pure_dict()`,
    cast to `cfg.param_dtype`. A missing, extra or misshapen tensor is named in a LimaError."""
    from lima_jax.errors import LimaError

    graphdef, state = nnx.split(abstract_model(cfg))
    expected = dict(jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0])
    given = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path in expected.keys() | given.keys():
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        if path not in given:
            raise LimaError(f"parameter {name}: missing")
        if path not in expected:
            raise LimaError(f"parameter {name}: not part of this model")
        if tuple(given[path].shape) != tuple(expected[path].shape):
            raise LimaError(f"parameter {name}: expected shape {tuple(expected[path].shape)}, found {tuple(given[path].shape)}")
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda p: jnp.asarray(p, cfg.param_dtype), params))
    return nnx.merge(graphdef, state)
