"""The model laid out for decoding: the training model's weights, held the way a decode step reads them.

This is where decoding's speed choices for a given device live (most of them for XLA:CPU); the network
(`llama.py`) makes none. Training keeps the layers stacked along a `layers` axis (one `lax.scan`,
compile time flat in depth). A decode step runs the layers unrolled, and slicing a stacked weight
copies it every step on XLA:CPU; so `for_decoding` gives every layer arrays of its own. On one device
it also fuses each layer's q/k/v projections into one matrix and gate/up into another: a step then
runs fewer, wider matrix-vector products, and on a CPU each small one pays a fixed cost. (Under tensor
parallelism fused columns would not split by head, so a mesh keeps them apart.) Neither changes what
the model computes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lima_jax.model.kv_cache import KVCache
from lima_jax.model.llama import Block, Llama, whole_sequences


class FusedBlock(Block):
    """A layer whose q/k/v weights are one (D, (H + 2K) * Dh) matrix and gate/up one (D, 2F)."""

    def __init__(self, block: Block):  # noqa: D107 - built from a layer, not from a config
        self.cfg = block.cfg
        d = block.cfg.dim
        self.attn_norm, self.wo, self.mlp_norm, self.w_down = block.attn_norm, block.wo, block.mlp_norm, block.w_down
        for bias in ("bq", "bk", "bv", "bo"):  # the architectures with biases keep them as they are
            if hasattr(block, bias):
                setattr(self, bias, getattr(block, bias))
        self.wqkv = nnx.Param(jnp.concatenate([w[...].reshape(d, -1) for w in (block.wq, block.wk, block.wv)], axis=-1))
        self.w_gate_up = nnx.Param(jnp.concatenate([block.w_gate[...], block.w_up[...]], axis=-1))

    # `key` (a LoRA adapter's dropout in training) is always None here: a decoding model does not train.
    def project_qkv(self, h: jax.Array, key: None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        cfg = self.cfg
        heads, kv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
        q, k, v = jnp.split(self._project("btd,dn->btn", h, self.wqkv), [heads * dh, (heads + kv) * dh], axis=-1)
        b, t = h.shape[:2]
        return self.add_qkv_bias((q.reshape(b, t, heads, dh), k.reshape(b, t, kv, dh), v.reshape(b, t, kv, dh)))

    def project_gate_up(self, h: jax.Array, key: None = None) -> tuple[jax.Array, jax.Array]:
        return tuple(jnp.split(self._project("btd,df->btf", h, self.w_gate_up), 2, axis=-1))

    def _project(self, spec: str, x: jax.Array, weight: nnx.Param, key: None = None) -> jax.Array:
        """x times a weight, accumulated in float32 and cast back to x's dtype: what bf16 x bf16 -> bf16
        computes on an accelerator. XLA:CPU runs a bf16 x bf16 -> f32 product as it lies, but converts
        both operands of a bf16 -> bf16 one to f32 first (a copy of every weight, every step); float32
        weights compute exactly as before."""
        return jnp.einsum(spec, x, weight[...].astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)


class DecodingLlama(Llama):
    """A Llama whose layers are a list of separate Blocks (or FusedBlocks): for inference only."""

    def __init__(self, model: Llama, blocks: list[Block]):  # noqa: D107 - built from a model
        self.cfg = model.cfg
        self.embed, self.norm = model.embed, model.norm
        if not model.cfg.tie_embeddings:
            self.lm_head = model.lm_head
        self.layers = nnx.List(blocks)

    def decode_blocks(self) -> list[Block]:
        return list(self.layers)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 *, dropout_rng: jax.Array | None = None) -> jax.Array:
        """Logits (B, T, V) of a whole sequence (e.g. scoring), through the decode path."""
        if dropout_rng is not None:
            raise ValueError("a model laid out for decoding does not train")
        positions, segment_ids = whole_sequences(tokens, positions, segment_ids)
        logits, _ = self.decode(tokens, positions, segment_ids, KVCache.zeros(self.cfg, *tokens.shape))
        return logits


def for_decoding(model: Llama, *, fuse_projections: bool = True) -> DecodingLlama:
    """The model with each layer's parameters in arrays of its own (and, with `fuse_projections`,
    fused q/k/v and gate/up); a model that decodes scanned (`cfg.decode_scan`) stays as it is. Consumes `model`: its stacked tensors are freed one name at a time
    as their slices are made, so memory grows by one stacked tensor at most."""
    if isinstance(model, DecodingLlama) or model.cfg.decode_scan:  # scanned decoding reads the stacked layers
        return model
    cfg, stacked = model.cfg, model.layers
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Block(cfg, rngs=nnx.Rngs(0))))
    per_layer: list[dict] = [{} for _ in range(cfg.num_layers)]
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
        block = nnx.merge(graphdef, state)
        blocks.append(FusedBlock(block) if fuse_projections else block)
    return DecodingLlama(model, blocks)
