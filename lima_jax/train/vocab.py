"""The trained vocabulary: which tokenizer a run trains with, its ids plus LIMA's new end-of-turn token,
padded to a multiple of `model.vocab_multiple` rows; and which of a pretrained checkpoint's rows the
run keeps (`checkpoint.load_resized` lays them out). One definition for the trainer, AOT and the dry
run, so their models agree."""
from __future__ import annotations

import ml_collections

from lima_jax.config import model_config
from lima_jax.data.tokenizer import ChatTokenizer
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig
from lima_jax.storage.paths import Path, user_path


def tokenizer_for(config: ml_collections.ConfigDict) -> Path | None:
    """`data.tokenizer`, else the init checkpoint's, else None (the demo's, for demo data only)."""
    if config.data.tokenizer:
        return user_path(config.data.tokenizer)
    if not config.init_checkpoint:
        return None
    from lima_jax.weights import checkpoint  # Orbax: only when a checkpoint is read

    found = checkpoint.tokenizer_path(config.init_checkpoint)
    if found is None:
        raise LimaError(
            f"config key data.tokenizer: {config.init_checkpoint} holds no tokenizer; pass the base model's "
            "with --config.data.tokenizer=PATH"
        )
    return found


def tokenizer_pieces(config: ml_collections.ConfigDict) -> tuple[int, str]:
    """(the tokenizer's ids, where the count came from) for the tokenizer training reads (`tokenizer_for`:
    `data.tokenizer`, else the init checkpoint's, whose row count may exceed it); with neither, the config's
    `model.vocab_size` (AOT compiling a config for a tokenizer it was not given)."""
    path = tokenizer_for(config)
    if path is None:
        return config.model.vocab_size, "config key model.vocab_size"
    return ChatTokenizer(path, eot=config.data.eot).num_pieces, str(path)


def adds_eot(config: ml_collections.ConfigDict) -> bool:
    """Whether the run adds LIMA's new end-of-turn token (`data.eot` empty) to the tokenizer's ids."""
    return not config.get("data", {}).get("eot", "")


def trained_model_config(config: ml_collections.ConfigDict, tokenizer_pieces: int | None = None) -> ModelConfig:
    """The model a run trains: the config's architecture with the tokenizer's ids plus LIMA's new
    end-of-turn token (none when `data.eot` reuses one of the tokenizer's), padded up to a multiple of
    `model.vocab_multiple` rows. Without a tokenizer at hand, `model.vocab_size` counts its ids."""
    pieces = config.model.vocab_size if tokenizer_pieces is None else tokenizer_pieces
    used = pieces + int(adds_eot(config))
    multiple = config.model.get("vocab_multiple", 1)
    padded = -(-used // multiple) * multiple
    return model_config(config).replace(vocab_size=padded, vocab_padding=padded - used)


def tokenizer_ids(config: ml_collections.ConfigDict, cfg: ModelConfig) -> int:
    """How many of the trained model `cfg`'s ids are the tokenizer's (the rest: a new EOT)."""
    return cfg.used_vocab_size - int(adds_eot(config))


def check_rows(config: ml_collections.ConfigDict, base: ModelConfig, cfg: ModelConfig) -> None:
    """The init checkpoint `base` has a row for every tokenizer id (more is normal: many models pad)."""
    pieces = tokenizer_ids(config, cfg)
    if base.used_vocab_size < pieces:
        raise LimaError(
            f"config key data.tokenizer: the tokenizer has {pieces} ids but {config.init_checkpoint} has "
            f"{base.used_vocab_size} embedding rows"
        )


def kept_rows(config: ml_collections.ConfigDict, base: ModelConfig, cfg: ModelConfig) -> int:
    """The checkpoint rows a run keeps: the tokenizer's ids (its rows past them are dropped, a new EOT
    starts at their mean), or all of `cfg`'s when the checkpoint is a fine-tune of this very vocabulary."""
    return cfg.used_vocab_size if base.used_vocab_size == cfg.used_vocab_size else tokenizer_ids(config, cfg)
