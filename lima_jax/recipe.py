"""LIMA's recipe (Zhou et al., 2023, section 3 and appendix), as the defaults of every config.

    15 epochs; AdamW b1 0.9, b2 0.95, weight decay 0.1; learning rate 1e-5 falling linearly to 1e-6,
    no warmup; 32 examples per batch for 65B, 64 for smaller models; 2,048-token texts; a new
    end-of-turn token after each utterance; residual dropout rising linearly from 0.0 at the bottom
    layer to 0.3 at the top for 65B (0.2 for smaller models); a checkpoint every epoch, to pick one
    between epochs 5 and 10 on a 50-example dev set.

Config files (`configs/NAME.py`) call `lima_config(name, **model dimensions)` and change what their
model needs; everything else a run reads is listed here with its default. `configs/auto.py` calls
`auto_config()` instead: no dimensions at all, they are read from `init_checkpoint` when the run starts
(`from_checkpoint`), and the batch size and top dropout follow the model's size (`recipe_for_size`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from ml_collections import config_dict

from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig, param_count

# The model keys that make a checkpoint's weights mean what they mean: a config and the checkpoint it
# starts from must agree on every one.
ARCHITECTURE = ("dim", "num_layers", "num_heads", "num_kv_heads", "head_dim", "ffn_dim", "tie_embeddings", "rope_theta", "norm_eps",
                "rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len",
                "qkv_bias", "out_bias", "family")
# What `--config=auto` takes from the checkpoint besides: its vocabulary, context and special ids.
FROM_CHECKPOINT = ARCHITECTURE + ("vocab_size", "max_len", "bos_id", "eos_id")
# LIMA (section 3): "32 for 65B, 64 for smaller models" and dropout "0.3 for 65B, 0.2 for smaller
# models". Its 65B is LLaMA-1 65B; 7B to 33B models are the smaller ones (configs/33b.py keeps 64/0.2),
# so the line between them is drawn at 50B: Llama 2 70B falls on 65B's side (configs/llama2_70b.py).
LARGE_MODEL_PARAMS = 50e9
# The model keys `--config=auto` picks for the platform it runs on: key -> ({platform: value}, otherwise).
# dtype: bfloat16 on TPU and GPU, float32 on a CPU: XLA:CPU cannot run the attention gradient in bfloat16
# (a bf16 x bf16 -> f32 dot is unimplemented there), and would gain nothing.
# remat: on a CPU each layer is recomputed in the backward pass (`full`): there the activations kept for it
# are the step's largest cost in host memory (SmolLM2-135M's shape at 8 x 256 tokens: 3.5 of the 4.4 GB of
# temporaries; 0.9 GB with full remat), for about a third more compute. See the README's "Memory of a CPU
# fine-tune".
PER_PLATFORM = {"dtype": ({"cpu": "float32"}, "bfloat16"), "remat": ({"cpu": "full"}, "none")}


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

    c.data = _data_keys()
    c.optim = _optim_keys()
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})  # -1 takes the rest

    c.checkpoint = _checkpoint_keys()
    # LoRA (rank 0: every weight trains): adapters on a frozen base, `lima_jax.lora`.
    c.lora = _lora_keys()

    # Every step is logged (metrics.jsonl, TensorBoard, the progress bar: train/metrics.py), and checked finite
    # before a save. Weights & Biases (train/wandb_sink.py): log.wandb names the project (empty: off); the
    # entity (a user or team) and the run's display name default to W&B's own.
    c.log = ml_collections.ConfigDict({"wandb": "", "wandb_entity": "", "wandb_name": ""})
    c.peak_tflops = 0.0  # per device, for MFU; 0 looks it up by device kind (measured on CPU)
    return c


def _data_keys() -> ml_collections.ConfigDict:
    """The conversations, the tokenizer and how texts become rows."""
    d = ml_collections.ConfigDict()
    d.manual_dir = ""  # LIMA's train.jsonl/test.jsonl (or your own); empty uses the embedded demo
    # A sentencepiece or Llama 3 (tiktoken) tokenizer.model, an HF tokenizer.json or model folder;
    # empty: the init checkpoint's, or the demo's.
    d.tokenizer = ""
    # The end-of-turn token: empty adds LIMA's new token (the vocabulary grows by one); a token of the
    # tokenizer (e.g. <|eot_id|>, <|im_end|>) is reused instead.
    d.eot = ""
    # lima: BOS, then each turn followed by EOT (the paper's); template: the tokenizer's own Jinja chat
    # template renders each conversation (data.eot must then be the token it ends assistant turns with).
    d.chat_format = "lima"
    d.train_on = "assistant"  # assistant | all
    d.skip_invalid = False
    d.max_len = 2048  # longer texts are trimmed; also the packed row length
    d.pack = True
    d.dev_file = ""  # a dev set file; empty holds out data.dev_size training examples
    d.dev_size = 50
    return d


def _optim_keys() -> ml_collections.ConfigDict:
    """AdamW as LIMA ran it, and how a lean full fine-tune narrows what it steps."""
    o = ml_collections.ConfigDict()
    o.lr = 1e-5
    o.end_lr = 1e-6
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 0.1
    o.grad_clip = 0.0  # 0 turns clipping off
    # A lean full fine-tune: model.param_dtype=bfloat16 halves the parameters. Rounded to nearest, most of
    # LIMA's 1e-5 updates would vanish, so they reach bf16 parameters through a float32 master copy (master),
    # or by stochastic rounding (stochastic: no copy); nearest rounds as is. moments_dtype=bfloat16 halves AdamW's.
    o.narrow_params = "master"
    o.moments_dtype = ""  # "" as the parameters it steps (float32 with master weights) | float32 | bfloat16
    return o


def _checkpoint_keys() -> ml_collections.ConfigDict:
    """When steps are saved, how many are kept and in what dtype."""
    c = ml_collections.ConfigDict()
    c.every_steps = 0  # besides every epoch end; 0 turns it off
    c.max_to_keep = 0  # 0 keeps all (the paper picks among epochs 5-10)
    c.async_save = True
    c.params_dtype = ""  # "" as trained; bfloat16 halves fp32 steps (the latest also keeps them exact)
    return c


def _lora_keys() -> ml_collections.ConfigDict:
    """LoRA's adapters (rank 0: none)."""
    lora = ml_collections.ConfigDict()
    lora.rank = 0
    lora.alpha = 16.0  # the update is scaled by alpha / rank
    lora.dropout = 0.0  # on each adapter's input (PEFT's lora_dropout); LIMA's residual dropout applies as ever
    lora.targets = "q,k,v,o,gate,up,down"
    lora.base_dtype = ""  # float32 | bfloat16 | int8 | nf4 (QLoRA); empty: as the base checkpoint stores it
    return lora


def check_architecture(model: dict[str, Any], base: ModelConfig, source: str) -> None:
    """Every ARCHITECTURE key set in `model` (None is unset) is `base`'s, else a LimaError naming both."""
    for key in ARCHITECTURE:
        if model.get(key) is not None and model[key] != getattr(base, key):
            raise LimaError(f"config key model.{key}: {model[key]} but {source} has {getattr(base, key)}")


def recipe_for_size(num_params: int) -> tuple[int, float]:
    """LIMA's (batch size, top-layer residual dropout) for a model of `num_params` parameters:
    (32, 0.3) for 65B-class models, (64, 0.2) for smaller ones."""
    return (32, 0.3) if num_params >= LARGE_MODEL_PARAMS else (64, 0.2)


def auto_config() -> ml_collections.ConfigDict:
    """LIMA's recipe for whatever model `init_checkpoint` holds (`--config=auto`): the model keys the
    checkpoint fixes, the batch size and the top dropout are left unset (None) until `from_checkpoint`
    fills them at the start of the run; a key given on the command line is kept (and checked)."""
    c = lima_config("auto")
    for key in (*FROM_CHECKPOINT, "residual_dropout", *PER_PLATFORM):
        c.model[key] = config_dict.placeholder(type(c.model[key]))
    c.batch_size = config_dict.placeholder(int)
    return c


def needs_checkpoint(config: ml_collections.ConfigDict) -> bool:
    """Whether `config` still waits for `from_checkpoint` (an `auto_config()` not yet filled)."""
    return config.get("batch_size") is None or any(config.model.get(key) is None
                                                   for key in (*FROM_CHECKPOINT, "residual_dropout", *PER_PLATFORM))


def from_checkpoint(config: ml_collections.ConfigDict, platform: str | None = None) -> str:
    """Fills `config`'s unset model keys from `init_checkpoint`, its batch size and top dropout from the
    model's size, and its compute dtype and remat policy from the `platform` it will run on (default: JAX's backend), in
    place; a model key set to another value than the checkpoint's architecture is a LimaError naming
    both. Returns the line that describes what was chosen."""
    import jax

    from lima_jax.weights import checkpoint  # Orbax: only for the commands that read a checkpoint

    source = config.init_checkpoint
    if not source:
        raise LimaError("config key init_checkpoint: this config reads the model's architecture from it; pass --config.init_checkpoint=CKPT")
    base = checkpoint.load_model_config(source)
    check_architecture(config.model.to_dict(), base, source)
    stored = {**dataclasses.asdict(base), "vocab_size": base.used_vocab_size}  # padding rows are not the vocabulary
    for key in FROM_CHECKPOINT:
        if config.model[key] is None:
            config.model[key] = stored[key]
    for key, (by_platform, otherwise) in PER_PLATFORM.items():
        if config.model[key] is None:
            platform = platform or jax.default_backend()
            config.model[key] = by_platform.get(platform, otherwise)
    values = {k: v for k, v in config.model.to_dict().items() if k != "vocab_multiple"}
    num_params = param_count(ModelConfig(**{**values, "residual_dropout": 0.0}))
    batch, dropout = recipe_for_size(num_params)
    if config.batch_size is None:
        config.batch_size = batch
    if config.model.residual_dropout is None:
        config.model.residual_dropout = dropout
    return (f"{source}: {describe(ModelConfig(**values), num_params)}; batch {config.batch_size}, top-layer dropout "
            f"{config.model.residual_dropout}, computing in {config.model.dtype} with remat {config.model.remat}")


def check_platform(config: ml_collections.ConfigDict, platform: str) -> None:
    """A training config `platform` cannot run, refused before anything is compiled."""
    if platform == "cpu" and config.model.dtype == "bfloat16":
        raise LimaError("config key model.dtype: bfloat16 does not train on a CPU (XLA:CPU has no bf16 x bf16 -> f32 "
                        "matmul for the attention gradient); use float32 there")


def describe(cfg: ModelConfig, num_params: int) -> str:
    """One line naming an architecture, e.g. `llama, 6.74B parameters: 32 layers, dim 4096, ...`."""
    rope = f"rope theta {cfg.rope_theta:g}" + (
        f" with llama3 scaling (factor {cfg.rope_factor:g}, original context {cfg.rope_original_max_len})" if cfg.rope_scaling == "llama3" else "")
    biases = [name for name, on in (("q/k/v", cfg.qkv_bias), ("output", cfg.out_bias)) if on]
    return (f"{cfg.family}, {num_params / 1e9:.2f}B parameters: {cfg.num_layers} layers, dim {cfg.dim}, {cfg.num_heads} heads "
            f"({cfg.num_kv_heads} key/value) of {cfg.resolved_head_dim}, MLP {cfg.ffn_dim}, vocabulary {cfg.vocab_size}, "
            f"context {cfg.max_len}, {rope}, {'tied' if cfg.tie_embeddings else 'separate'} embeddings"
            + (f", {' and '.join(biases)} biases" if biases else ""))
