"""What a run starts from besides a random init: a pretrained checkpoint laid out for the run's
vocabulary, trained in full, or held as the frozen base of a LoRA run (with the record its steps carry)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import ml_collections

from lima_jax.errors import LimaError
from lima_jax.lora import base as lora_base
from lima_jax.lora.spec import LoraSpec
from lima_jax.model import ModelConfig
from lima_jax.recipe import check_architecture
from lima_jax.storage.paths import Path
from lima_jax.train import vocab
from lima_jax.weights import checkpoint
from lima_jax.weights.checkpoint import LORA, read_json_item


def check_pretrained(config: ml_collections.ConfigDict, cfg: ModelConfig) -> ModelConfig:
    """The init checkpoint's model config, once its architecture and vocabulary are known to fit the
    model `cfg` trains (read from its metadata: no array is loaded)."""
    base = checkpoint.load_model_config(config.init_checkpoint)
    check_architecture(dataclasses.asdict(cfg), base, config.init_checkpoint)
    vocab.check_rows(config, base, cfg)
    checkpoint.check_stored_shapes(config.init_checkpoint, base)
    return base


def load_pretrained(config: ml_collections.ConfigDict, cfg: ModelConfig, mesh, keep_dtype: bool = False) -> tuple[dict, int]:
    """The init checkpoint's parameters, sharded, laid out for the trained vocabulary (`checkpoint.load_resized`),
    and how many of its rows were kept: its rows past the tokenizer's ids are dropped; a new EOT gets an
    embedding row and output column initialised to the mean of the tokenizer's rows, unless the checkpoint
    is a fine-tune of this very vocabulary (ids + EOT), which keeps its own."""
    base = check_pretrained(config, cfg)
    kept = vocab.kept_rows(config, base, cfg)
    return checkpoint.load_resized(config.init_checkpoint, base, cfg, kept, mesh, keep_dtype), kept


def load_frozen_base(config: ml_collections.ConfigDict, cfg: ModelConfig, mesh, lora: LoraSpec) -> tuple[LoraSpec, Any, dict]:
    """(the spec with the rows the run adds, the base as the run holds it fixed, the record its steps carry:
    spec, the base's resolved path and fingerprint)."""
    params, kept = load_pretrained(config, cfg, mesh, keep_dtype=True)
    lora = dataclasses.replace(lora, rows=(kept, cfg.used_vocab_size))
    where = lora_base.placement(params, lora.base_dtype, cfg, mesh)
    frozen = jax.jit(functools.partial(lora_base.frozen, base_dtype=lora.base_dtype), out_shardings=where)(params)
    record = {"spec": lora.record(), "base": str(checkpoint.resolve(config.init_checkpoint)),
              "base_fingerprint": checkpoint.fingerprint(config.init_checkpoint)}
    return lora, frozen, record


def check_same_base(step: Path, lora_record: dict) -> None:
    """A LoRA run resumes only on the base its adapters were trained on."""
    saved = read_json_item(step / LORA) if (step / LORA).is_dir() else None
    if saved is None:
        raise LimaError(f"checkpoint {step} holds no LoRA adapters but this run trains them; use a new --config.workdir")
    if saved["base_fingerprint"] != lora_record["base_fingerprint"]:
        raise LimaError(f"config key init_checkpoint: {lora_record['base']} holds other weights (fingerprint "
                        f"{lora_record['base_fingerprint']}) than the base this run's adapters were trained on "
                        f"({saved['base']}, fingerprint {saved['base_fingerprint']}); restore it or use a new --config.workdir")


def describe_lora(lora: LoraSpec, adapters: Any, frozen: Any) -> str:
    """What a LoRA run trains and holds, for its start-up line."""
    rows = f" and {lora.new_rows} added token row{'s' * (lora.new_rows != 1)}" if lora.new_rows else ""
    return (f"LoRA rank {lora.rank} (alpha {lora.alpha:g}, dropout {lora.dropout:g}) on {','.join(lora.targets)}{rows}: "
            f"{sum(a.size for a in jax.tree.leaves(adapters)):,} trained parameters; the frozen base holds "
            f"{lora_base.nbytes(frozen) / 2**20:,.1f} MiB ({lora.base_dtype or 'as stored'})")
