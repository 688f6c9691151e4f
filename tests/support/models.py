"""Small random models: a config, weights far enough from uniform that a layout bug shows, tokens,
the compiled forward pass the model tests call, and a way to damage a saved tensor file."""
from __future__ import annotations

import contextlib
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lima_jax.model import Llama, ModelConfig, abstract_model, model_from_params


def tiny(**changes) -> ModelConfig:
    """A small fp32 config; GQA (4 query heads over 2 key/value heads) unless told otherwise."""
    base = ModelConfig(
        vocab_size=97,
        dim=64,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        ffn_dim=128,
        max_len=64,
        residual_dropout=0.0,
    )
    return base.replace(**changes)


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """A parameter tree with weights large enough that attention is far from uniform, and norm
    scales away from 1, so a masking, position or layout bug shows in the logits."""
    pure = nnx.state(abstract_model(cfg)).to_pure_dict()
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        is_norm = jax.tree_util.keystr(path).endswith("norm']")
        out.append(1.0 + 0.1 * noise if is_norm else 0.1 * noise)
    return jax.tree_util.tree_unflatten(treedef, out)


def random_model(cfg: ModelConfig, seed: int = 0) -> Llama:
    return model_from_params(cfg, random_params(cfg, seed))


def random_tokens(cfg: ModelConfig, shape: tuple[int, ...], seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, shape), jnp.int32)


def saved_residuals(fn, *args) -> str:
    """What the backward pass of `fn(*args)` keeps, one array a line, as `jax.ad_checkpoint.print_saved_residuals`
    prints it (e.g. "f32[3,2,64] output of scan from ...")."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(fn, *args)
    return out.getvalue()


@nnx.jit
def forward(model: Llama, tokens, positions=None, segment_ids=None, dropout_rng=None) -> jax.Array:
    """The model's forward pass, compiled (eager op-by-op dispatch is what makes tiny tests slow)."""
    return model(tokens, positions, segment_ids, dropout_rng=dropout_rng)


def converted_checkpoint(root, vocab_size: int, seed: int = 0, **changes):
    """A random transformers model in a lima_jax checkpoint with the demo tokenizer, as `convert`
    writes it: a base model with the tokenizer's 512 pieces, or a fine-tuned one with EOT (513)."""
    from support.hf_reference import random_hf_model

    from lima_jax.data import demo_dir
    from lima_jax.weights.convert import convert

    cfg = ModelConfig(vocab_size=vocab_size, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64).replace(**changes)
    random_hf_model(cfg, seed).save_pretrained(root / "hf")
    return convert(root / "hf", root / "ckpt", tokenizer=demo_dir() / "tokenizer.model")


def flip_bytes(folder, count=4096):
    """Inverts `count` bytes in the middle of the largest file under `folder` (a tensor data file)."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.seek(os.path.getsize(biggest) // 2)
        data = f.read(count)
        f.seek(os.path.getsize(biggest) // 2)
        f.write(bytes(b ^ 0xFF for b in data))
