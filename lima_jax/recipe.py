"""LIMA's recipe (Zhou et al., 2023, section 3 and appendix), as the defaults of every config.

    15 epochs; AdamW b1 0.9, b2 0.95, weight decay 0.1; learning rate 1e-5 falling linearly to 1e-6,
    no warmup; 32 examples per batch for 65B, 64 for smaller models; 2,048-token texts; a new
    end-of-turn token after each utterance; residual dropout rising linearly from 0.0 at the bottom
    layer to 0.3 at the top for 65B (0.2 for smaller models); a checkpoint every epoch, to pick one
    between epochs 5 and 10 on a 50-example dev set.

Config files (`configs/NAME.py`) call `lima_config(name, **model dimensions)` and change what their
model needs; everything else a run reads is listed here with its default.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig


def lima_config(name: str, *, batch_size: int = 64, **model: Any) -> ml_collections.ConfigDict:
    """A config named `name` with LIMA's recipe as defaults, for the model dimensions given.

    The model keys are ModelConfig's fields (model.dim, model.num_layers, ...). The recipe: 15
    epochs; AdamW with b1 0.9, b2 0.95, weight decay 0.1; learning rate 1e-5 decaying linearly to
    1e-6, no warmup; 32 examples per batch for 65B, 64 for smaller models; 2048-token texts; residual
    dropout rising to 0.3 at the top layer for 65B and 0.2 for smaller models. Loss on assistant turns
    and their end-of-turn tokens (the paper does not say; `data.train_on=all` trains on every token).
    """
    unknown = set(model) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise LimaError(f"lima_config: unknown model key(s) {sorted(unknown)}")
    c = ml_collections.ConfigDict()
    c.name = name
    c.model = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig(**model)))
    del c.model.vocab_padding  # training derives it from vocab_multiple
    # The trained vocabulary (the tokenizer's pieces + EOT) is padded up to a multiple of this, so
    # the embedding, the output matrix and the logits shard over the tensor axis (128 divides every
    # tensor-axis size in use); the padding ids are masked, never sampled nor trained towards.
    c.model.vocab_multiple = 128
    c.workdir = f"runs/{name}"  # a run restarted with the same workdir resumes from its latest step
    c.init_checkpoint = ""  # a converted pretrained checkpoint; empty trains from a random init
    c.seed = 0
    c.num_epochs = 15
    c.batch_size = batch_size  # examples per step, across all hosts
    c.grad_accum = 1  # micro-batches per step, when a batch does not fit in memory at once

    c.data = ml_collections.ConfigDict()
    c.data.manual_dir = ""  # LIMA's train.jsonl/test.jsonl (or your own); empty uses the embedded demo
    # A sentencepiece or Llama 3 (tiktoken) tokenizer.model, an HF tokenizer.json or model folder;
    # empty: the init checkpoint's, or the demo's.
    c.data.tokenizer = ""
    # The end-of-turn token: empty adds LIMA's new token (the vocabulary grows by one); a token of the
    # tokenizer (e.g. <|eot_id|>, <|im_end|>) is reused instead.
    c.data.eot = ""
    # lima: BOS, then each turn followed by EOT (the paper's); template: the tokenizer's own Jinja chat
    # template renders each conversation (data.eot must then be the token it ends assistant turns with).
    c.data.chat_format = "lima"
    c.data.train_on = "assistant"  # assistant | all
    c.data.skip_invalid = False
    c.data.max_len = 2048  # longer texts are trimmed; also the packed row length
    c.data.pack = True
    c.data.dev_file = ""  # a dev set file; empty holds out data.dev_size training examples
    c.data.dev_size = 50

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-5
    c.optim.end_lr = 1e-6
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1
    c.optim.grad_clip = 0.0  # 0 turns clipping off

    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})  # -1 takes the rest

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 0  # besides every epoch end; 0 turns it off
    c.checkpoint.max_to_keep = 0  # 0 keeps all (the paper picks among epochs 5-10)
    c.checkpoint.async_save = True

    c.log_every = 1
    c.peak_tflops = 0.0  # per device, for MFU; 0 looks it up by device kind (measured on CPU)
    return c
