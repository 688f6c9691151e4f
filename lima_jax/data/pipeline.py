"""From `config.data` to what the trainer consumes: the tokenizer, the training batcher and the dev
batches. Everything that can be wrong with the data is found here, before any compilation. The
trainer says which tokenizer to use: the data layer knows nothing of checkpoints."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Sequence

import ml_collections

from lima_jax.data import demo_dir, text_tokenizers
from lima_jax.data.batches import Batch, Batcher, Example, eval_batches
from lima_jax.data.lima import dev_split, load_split
from lima_jax.data.records import Record, read_conversations
from lima_jax.data.tokenizer import ChatTokenizer
from lima_jax.errors import LimaError
from lima_jax.storage.paths import Path, PathLike, is_cloud, user_path


@dataclasses.dataclass
class TrainingData:
    tokenizer: ChatTokenizer
    batcher: Batcher
    dev_batches: list[Batch]
    dev_records: list[Record]  # the dev conversations, which the trainer writes to <workdir>/dev.jsonl
    num_train: int
    num_dev: int
    skipped: int
    source: str  # where the examples came from, for the log
    dev_source: str  # the dev set's file, or how it was held out
    fingerprint: dict[str, str]  # what the run learns from, hashed: a resume refuses other inputs


def fingerprint(train: Sequence[Record], dev: Sequence[Record], tokenizer_path: PathLike) -> dict[str, str]:
    """SHA-256 of the training conversations (in order), the dev conversations and the tokenizer's
    files: the same config over edited data is a different run."""

    def conversations(records: Sequence[Record]) -> str:
        h = hashlib.sha256()
        for r in records:
            h.update(json.dumps(r["conversations"], ensure_ascii=False).encode() + b"\n")
        return h.hexdigest()

    # The tokenizer's own files only: an HF model folder also holds the weights.
    files = sorted(text_tokenizers.files_of(tokenizer_path).items())
    tokenizer = hashlib.sha256()
    for name, f in files:
        tokenizer.update(name.encode() + b"\0" + f.read_bytes())
    return {"train": conversations(train), "dev": conversations(dev), "tokenizer": tokenizer.hexdigest()}


def _load_train_split(manual_dir, cache_dir, skip_invalid: bool, process_index: int, process_count: int):
    """Process 0 prepares the TFDS files; the other hosts wait, then read what it wrote. (The dry
    run plans batches for a pod's hosts from one process: only real processes synchronise.)"""
    import jax

    if process_count == 1 or jax.process_count() == 1:
        return load_split(manual_dir, "train", cache_dir=cache_dir, skip_invalid=skip_invalid)
    from jax.experimental import multihost_utils

    if process_index == 0:
        loaded = load_split(manual_dir, "train", cache_dir=cache_dir, skip_invalid=skip_invalid)
    multihost_utils.sync_global_devices("lima_jax: training data prepared")
    if process_index != 0:
        loaded = load_split(manual_dir, "train", cache_dir=cache_dir, skip_invalid=skip_invalid)
    return loaded


def tfds_cache(workdir: str) -> pathlib.Path:
    """Where the prepared TFDS files go: `<workdir>/tfds`, or for a cloud workdir a local cache (they
    are read back at random, record by record; the folder is named by the input's hash, so runs
    share it safely)."""
    if not is_cloud(workdir):
        return pathlib.Path(user_path(workdir)) / "tfds"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "lima_jax" / "tfds"


def manual_dir(config: ml_collections.ConfigDict) -> Path:
    """`data.manual_dir` (local or gs://), or the embedded demo."""
    return user_path(config.data.manual_dir) if config.data.manual_dir else Path(demo_dir())


def split_conversations(config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1,
                        cache_dir: pathlib.Path | None = None):
    """(train records, dev records, invalid lines skipped): the dev set is `data.dev_file`, else the
    data folder's `dev.jsonl`, else `data.dev_size` examples held out with the run's seed (so
    checkpoint selection sees the same). TFDS prepares the data under `cache_dir` (default `<workdir>/tfds`)."""
    data = config.data
    records, skipped = _load_train_split(manual_dir(config), cache_dir or tfds_cache(config.workdir), data.skip_invalid, process_index, process_count)
    given = dev_file(config)
    if given:
        dev, dev_skipped = read_conversations(given, skip_invalid=data.skip_invalid)
        return list(records), dev, skipped + dev_skipped
    train, dev = dev_split(records, data.dev_size, config.seed)
    return train, dev, skipped


def dev_file(config: ml_collections.ConfigDict) -> Path | None:
    """The dev set's file: `data.dev_file`, else `dev.jsonl` beside the training data, else None
    (then `data.dev_size` examples are held out)."""
    if config.data.dev_file:
        return user_path(config.data.dev_file)
    beside = manual_dir(config) / "dev.jsonl"
    return beside if config.data.manual_dir and beside.exists() else None


def build(
    config: ml_collections.ConfigDict,
    *,
    tokenizer_path: PathLike | None,
    process_index: int,
    process_count: int,
    row_multiple: int,
    eval_rows: int,
    cache_dir: pathlib.Path | None = None,
) -> TrainingData:
    """`tokenizer_path`: the one to train with (local or gs://), or None for the demo's (demo data only).
    `config` is validated (`lima_jax.config.validate`)."""
    data = config.data
    using_demo = not data.manual_dir
    source = manual_dir(config)
    train, dev, skipped = split_conversations(config, process_index, process_count, cache_dir)
    train = [r for r in train if len(r["conversations"]) >= 2]  # prompts without answers teach nothing
    if not train:
        raise LimaError(f"{source}: no training conversations with an answer")

    if tokenizer_path is None:
        if not using_demo:
            raise LimaError("config key data.tokenizer: give the base model's tokenizer (tokenizer.model, "
                            "tokenizer.json or its folder) to use with your data")
        tokenizer_path = demo_dir() / "tokenizer.model"
    tokenizer = ChatTokenizer(tokenizer_path, eot=data.eot, chat_format=data.chat_format)

    def encode(record) -> Example:
        return tokenizer.encode_conversation(record["conversations"], max_len=data.max_len + 1, train_on=data.train_on)

    # One pass for the lengths table (the packing plan needs every length); batches then re-encode
    # only this host's examples, on demand.
    lengths = [len(encode(r)[0]) for r in train]
    batcher = Batcher(
        lengths,
        lambda i: encode(train[i]),
        batch_size=config.batch_size,
        seq_len=data.max_len,
        num_epochs=config.num_epochs,
        seed=config.seed,
        process_index=process_index,
        process_count=process_count,
        pack=data.pack,
        row_multiple=row_multiple,
    )
    dev = [r for r in dev if len(r["conversations"]) >= 2]
    dev_examples: Sequence[Example] = [encode(r) for r in dev]
    dev_batches = eval_batches(dev_examples, data.max_len, eval_rows) if dev_examples else []
    given = dev_file(config)
    dev_source = f"from {given}" if given else "held out of them"
    return TrainingData(tokenizer, batcher, dev_batches, dev, len(train), len(dev_examples), skipped, str(source),
                        dev_source, fingerprint(train, dev, tokenizer_path))
