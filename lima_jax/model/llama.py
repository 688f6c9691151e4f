"""The LLaMA decoder in Flax NNX: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU
(the arithmetic in `layers.py` and `attention.py`, assembled here into layers and the model).

Shapes: B batch, T query tokens, S key slots, D model dim, H query heads, K key/value heads,
Dh head dim, F hidden MLP dim, V vocabulary, L layers.

Parameters carry logical axis names that a rules table maps onto a mesh (the model never names a
mesh axis); the layers are stacked and run with `lax.scan`, so compile time does not grow with depth.
`__call__` trains (whole sequences, dropout) and `decode` runs new tokens against a KV cache;
`decode_layout.py` lays a trained model out for fast decoding.

Residual dropout follows LIMA: each residual branch (attention output, MLP output) is dropped out
before it is added back, at a rate rising linearly from 0.0 at the bottom layer to
`residual_dropout` at the top one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lima_jax.model.attention import ATTENTION_SAVED, attention, cached_attention, self_attention
from lima_jax.model.config import REMAT_POLICIES, ModelConfig
from lima_jax.model.kv_cache import KVCache
from lima_jax.model.layers import dropout_rates, project, residual_dropout, rms_norm, rope_frequencies, rotary, swiglu, weight_product
from lima_jax.sharding import constrain

ACTIVATION_AXES = ("batch", "length", "act_embed")  # the residual stream's logical axes
# The logit of a padding id: its probability is exactly 0, and unlike -inf it stays finite through
# temperature, repetition penalty and a cross-entropy's 0 * log p.
PADDING_LOGIT = -1e30


def _param(rngs: nnx.Rngs, init, shape: tuple[int, ...], names: tuple[str, ...], dtype) -> nnx.Param:
    # eager_sharding=False: the names are metadata here; placement on a mesh happens in sharding.py.
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=names, eager_sharding=False)


def whole_sequences(tokens: jax.Array, positions: jax.Array | None, segment_ids: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Positions 0..T-1 and one segment per row, unless given (packed rows give their own)."""
    b, t = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids is None:
        segment_ids = jnp.ones((b, t), jnp.int32)
    return positions, segment_ids


def _adapter_keys(key: jax.Array | None, first: int, n: int) -> list[jax.Array | None]:
    """One key per projection, numbered q k v o gate up down (0-6): each adapter draws its own mask."""
    return [None if key is None else jax.random.fold_in(key, first + i) for i in range(n)]


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
        zeros = jax.nn.initializers.zeros
        if cfg.qkv_bias:
            self.bq = _param(rngs, zeros, (*stack, h, dh), (*lyr, "heads", "head_dim"), pd)
            self.bk = _param(rngs, zeros, (*stack, kv, dh), (*lyr, "kv_heads", "head_dim"), pd)
            self.bv = _param(rngs, zeros, (*stack, kv, dh), (*lyr, "kv_heads", "head_dim"), pd)
        if cfg.out_bias:
            self.bo = _param(rngs, zeros, (*stack, d), (*lyr, "norm"), pd)
        self.mlp_norm = _param(rngs, ones, (*stack, d), (*lyr, "norm"), pd)
        self.w_gate = _param(rngs, normal, (*stack, d, f), (*lyr, "embed", "mlp"), pd)
        self.w_up = _param(rngs, normal, (*stack, d, f), (*lyr, "embed", "mlp"), pd)
        self.w_down = _param(rngs, normal, (*stack, f, d), (*lyr, "mlp", "embed"), pd)

    def __call__(
        self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array, dropout_rate: jax.Array, dropout_key: jax.Array | None
    ) -> jax.Array:
        """Training: one layer on x (B, T, D), each token attending to the earlier tokens of its own
        segment, with residual dropout when a key is given."""
        attn_key = mlp_key = adapter_key = None
        if dropout_key is not None:
            attn_key, mlp_key = jax.random.split(dropout_key)
            adapter_key = jax.random.fold_in(dropout_key, 2)  # a LoRA adapter's own dropout (`lima_jax.lora`)
        q, k, v = (checkpoint_name(a, ATTENTION_SAVED[0]) for a in self._qkv_rotated(x, positions, adapter_key))
        out = self._self_attention(q, k, v, segment_ids, adapter_key)
        x = x + residual_dropout(out, dropout_rate, attn_key)
        x = x + residual_dropout(self._mlp(x, adapter_key), dropout_rate, mlp_key)
        return constrain(x, ACTIVATION_AXES)

    def decode(
        self,
        x: jax.Array,
        positions: jax.Array,
        q_segments: jax.Array,
        cache_segments: jax.Array,
        cache: tuple[jax.Array, jax.Array],
        index: jax.Array,
        layer: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Decoding: one layer on T new tokens x (B, T, D) with segment ids `q_segments`. They attend
        to the cache's slots before `index` (whose segment ids, before this call, are `cache_segments`)
        and to each other; their keys and values are written into this layer's cache (keys
        (B, K, S, Dh), values (B, K, Dh, S)) at slot `index`. Returns x and the updated cache. With
        `layer`, `cache` is every layer's, stacked (L, ...): only the new tokens are written, at [layer]."""
        q, k, v = self._qkv_rotated(x, positions)
        k, v = k.astype(cache[0].dtype), v.astype(cache[1].dtype)
        dt = q.dtype
        if layer is None:
            earlier = cache
            k_cache = jax.lax.dynamic_update_slice_in_dim(cache[0], k, index, axis=2)
            v_cache = jax.lax.dynamic_update_slice_in_dim(cache[1], v, index, axis=3)
            written = (k_cache, v_cache)
        else:
            earlier = (cache[0][layer], cache[1][layer])
            k_cache = jax.lax.dynamic_update_slice(cache[0], k[None], (layer, 0, 0, index, 0))
            v_cache = jax.lax.dynamic_update_slice(cache[1], v[None], (layer, 0, 0, 0, index))
            written = (k_cache[layer], v_cache[layer])
        if x.shape[1] == 1:  # a decode step: read the cache as it was, so that its update is in place
            out = cached_attention(q, k.astype(dt), v.astype(dt), earlier[0].astype(dt), earlier[1].astype(dt),
                                   q_segments, cache_segments, index)
        else:  # a prompt, once: one pass over the written cache scores T x S, not T x (S + T)
            kv_segments = jax.lax.dynamic_update_slice_in_dim(cache_segments, q_segments, index, axis=1)
            q_slots = index + jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), q_segments.shape)
            out = attention(q, written[0].astype(dt), written[1].astype(dt), q_segments, kv_segments, q_slots)
        x = x + self._project_out(out)
        x = x + self._mlp(x)
        return constrain(x, ACTIVATION_AXES), (k_cache, v_cache)

    def project_qkv(self, h: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q (B, T, H, Dh), k and v (B, T, K, Dh) from the normed input."""
        weights, keys = (self.wq, self.wk, self.wv), _adapter_keys(key, 0, 3)
        return self.add_qkv_bias(tuple(self._project("btd,dhk->bthk", h, w, k) for w, k in zip(weights, keys)))

    def add_qkv_bias(self, qkv: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q, k, v plus their biases, for the architectures that have them (`cfg.qkv_bias`)."""
        if not self.cfg.qkv_bias:
            return qkv
        return tuple(y + b[...].astype(y.dtype) for y, b in zip(qkv, (self.bq, self.bk, self.bv)))

    def project_gate_up(self, h: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """The MLP's gate and up projections (B, T, F) from the normed input."""
        return tuple(self._project("btd,df->btf", h, w, k) for w, k in zip((self.w_gate, self.w_up), _adapter_keys(key, 4, 2)))

    def _qkv_rotated(
        self, x: jax.Array, positions: jax.Array, key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q (B, T, H, Dh) and the keys (B, K, T, Dh) and values (B, K, Dh, T) in the cache's layout."""
        cfg = self.cfg
        q, k, v = self.project_qkv(rms_norm(x, self.attn_norm[...], cfg.norm_eps), key)
        inv_freq = rope_frequencies(cfg)
        q, k = rotary(q, positions, inv_freq), rotary(k, positions, inv_freq)
        return q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 3, 1)

    def _self_attention(self, q, k, v, segment_ids, key: jax.Array | None = None) -> jax.Array:
        """Training's attention within each segment of the rows, projected back to (B, T, D)."""
        out = self_attention(self.cfg, q, k.astype(q.dtype), v.astype(q.dtype), segment_ids)
        return self._project_out(checkpoint_name(out, ATTENTION_SAVED[1]), key)

    def _project_out(self, out: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """The attention output (B, T, H, Dh) projected back to the model dim (B, T, D)."""
        out = self._project("bthk,hkd->btd", out, self.wo, *_adapter_keys(key, 3, 1))
        return out + self.bo[...].astype(out.dtype) if self.cfg.out_bias else out

    def _mlp(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        gate, up = self.project_gate_up(rms_norm(x, self.mlp_norm[...], self.cfg.norm_eps), key)
        return self._project("btf,fd->btd", swiglu(gate, up), self.w_down, *_adapter_keys(key, 6, 1))

    def _project(self, spec: str, x: jax.Array, weight: nnx.Variable, key: jax.Array | None = None) -> jax.Array:
        """Every weight product of the layer: `project`'s (the decoding layout, `decode_layout.py`, computes its own)."""
        return project(spec, x, weight, key)


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
    if policy == "save_dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    if policy == "save_attention":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.save_only_these_names(*ATTENTION_SAVED))
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
        return self.logits(self.hidden(tokens, positions, segment_ids, dropout_rng=dropout_rng))

    def hidden(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        *,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """The residual stream after the last layer (B, T, D), which `logits` turns into logits: the
        loss does so a slice of the sequence at a time (`lima_jax.train.loss`), so that the (B, T, V)
        float32 logits and their gradient never exist whole. Arguments as `__call__`'s."""
        positions, segment_ids = whole_sequences(tokens, positions, segment_ids)
        cfg = self.cfg
        rates = jnp.asarray(dropout_rates(cfg.num_layers, cfg.residual_dropout))
        keys = None if dropout_rng is None else jax.random.split(dropout_rng, cfg.num_layers)
        graphdef, stacked = nnx.split(self.layers)

        def one_layer(x, per_layer):
            params, rate, key = per_layer
            return nnx.merge(graphdef, params)(x, positions, segment_ids, rate, key), None

        one_layer = _remat(one_layer, cfg.remat)
        x = self._embed(tokens)
        if cfg.scan_layers:
            x, _ = jax.lax.scan(one_layer, x, (stacked, rates, keys))
        else:
            for i in range(cfg.num_layers):
                x, _ = one_layer(x, (jax.tree.map(lambda a: a[i], stacked), rates[i], None if keys is None else keys[i]))
        return x

    def decode(
        self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: KVCache, *, last_only: bool = False
    ) -> tuple[jax.Array, KVCache]:
        """Runs T new tokens (a prompt, or one sampled token) against the cache; returns their
        logits (B, T, V), or with `last_only` the last token's (B, 1, V): a prompt's others are never
        read, and for a long one they would be the prefill's largest array; and the cache with their
        keys and values written at `cache.index`. The layers run unrolled, each with its own cache
        buffer, or with `cfg.decode_scan` under one `lax.scan` that carries the stacked cache and
        writes each layer's new slots in place."""
        head = (lambda x: self.logits(x[:, -1:])) if last_only else self.logits
        t = tokens.shape[1]
        if t > cache.max_len:
            raise ValueError(f"{t} tokens do not fit a KV cache of {cache.max_len} slots")
        kv_segments = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids, segment_ids, cache.index, axis=1)
        x, new_k, new_v = self._embed(tokens), [], []
        if self.cfg.decode_scan:
            graphdef, stacked = nnx.split(self.layers)

            def one_layer(carry, per_layer):
                x, k, v = carry
                params, i = per_layer
                x, (k, v) = nnx.merge(graphdef, params).decode(
                    x, positions, segment_ids, cache.segment_ids, (k, v), cache.index, layer=i
                )
                return (x, k, v), None

            layers = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)
            (x, k, v), _ = jax.lax.scan(one_layer, (x, cache.k, cache.v), (stacked, layers))
            k, v = constrain(k, ("layers", *KVCache.K_AXES)), constrain(v, ("layers", *KVCache.V_AXES))
            return head(x), KVCache(k, v, kv_segments, cache.index + t)
        for i, block in enumerate(self.decode_blocks()):
            x, (k, v) = block.decode(x, positions, segment_ids, cache.segment_ids, (cache.k[i], cache.v[i]), cache.index)
            new_k.append(constrain(k, KVCache.K_AXES))
            new_v.append(constrain(v, KVCache.V_AXES))
        return head(x), KVCache(tuple(new_k), tuple(new_v), kv_segments, cache.index + t)

    def decode_blocks(self) -> list[Block]:
        """The layers one at a time, for decoding: slices of the stacked parameters. (The inference
        layout, `decode_layout.py`, holds them as separate arrays instead.)"""
        graphdef, stacked = nnx.split(self.layers)
        return [nnx.merge(graphdef, jax.tree.map(lambda a: a[i], stacked)) for i in range(self.cfg.num_layers)]

    def _embed(self, tokens: jax.Array) -> jax.Array:
        return constrain(jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.dtype), ACTIVATION_AXES)

    def logits(self, x: jax.Array) -> jax.Array:
        """The output head: the final norm, then the (tied or own) vocabulary projection of x (..., T, D)
        to float32 logits (..., T, V), padding ids held at PADDING_LOGIT."""
        x = rms_norm(x, self.norm[...], self.cfg.norm_eps)
        spec, weight = ("btd,vd->btv", self.embed) if self.cfg.tie_embeddings else ("btd,dv->btv", self.lm_head)
        weight = weight[...].astype(x.dtype)
        if x.dtype == jnp.float32:  # float32 logits either way; weight_product's gradients are faster on a CPU
            logits = weight_product(spec, x, weight)
        else:
            logits = jnp.einsum(spec, x, weight, preferred_element_type=jnp.float32)
        if self.cfg.vocab_padding:  # padding ids are never sampled nor trained towards
            used = jnp.arange(self.cfg.vocab_size) < self.cfg.used_vocab_size
            logits = jnp.where(used, logits, PADDING_LOGIT)
        return constrain(logits, ("batch", "length", "vocab"))
