"""LIMA's optimiser: AdamW (b1 0.9, b2 0.95, weight decay 0.1), learning rate 1e-5 falling linearly
to 1e-6 over the whole run with no warmup; gradient clipping only when asked (the paper states none).
"""
from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """`optim.lr` at step 0, `optim.end_lr` at the last step (total_steps - 1), linear between."""
    return optax.linear_schedule(optim.lr, optim.end_lr, transition_steps=max(total_steps - 1, 1))


BIASES = ("bq", "bk", "bv", "bo")  # the attention biases some architectures have (model.Block)


def decay_mask(params):
    """Weight decay on weight matrices and embeddings; norm scales and biases are not pulled towards
    zero (as transformers' Trainer leaves them)."""
    def decays(path, _) -> bool:
        return "norm" not in jax.tree_util.keystr(path) and getattr(path[-1], "key", None) not in BIASES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    adamw = optax.adamw(
        learning_rate(optim, total_steps),
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        mask=decay_mask,
    )
    if optim.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip), adamw)
    return adamw
