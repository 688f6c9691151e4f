"""The LIMA dataset as a TFDS builder, prepared once per distinct input and read without TensorFlow.

LIMA (GAIR/lima on the Hugging Face hub) is gated behind a license, so code cannot fetch it: the
user downloads `train.jsonl` (1,030 conversations) and `test.jsonl` (300 prompts), optionally adds
a `dev.jsonl`, and points `--config.data.manual_dir` at the folder. The user's own data in LIMA's
format or in OpenAI's `messages` format goes through the same path (see records.py).

TFDS writes array_record files and `as_data_source` reads them back with random access, which needs
neither TensorFlow nor tf.data. Since users edit their files, the prepared data lives under a
directory named by a hash of the input files' contents: an edited file gets a fresh build instead
of stale records.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tensorflow_datasets.core.utils import tqdm_utils

from lima_jax.data.records import Record, read_conversations
from lima_jax.errors import LimaError
from lima_jax.storage.paths import Path, PathLike, user_path

SPLITS = ("train", "dev", "test")
# Part of the cache key: bump it when the builder's output changes for the same input files.
_FORMAT = "lima_jax.data.lima/2"

_WHERE = (
    "LIMA is the GAIR/lima dataset on the Hugging Face hub (https://huggingface.co/datasets/GAIR/lima): "
    "accept its license there, download train.jsonl and test.jsonl into a directory, "
    "then pass --config.data.manual_dir=DIR"
)


class Lima(tfds.core.GeneratorBasedBuilder):
    """LIMA's conversations (or the user's, in the same or OpenAI's format) from a manual dir."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train/test (+dev) from JSONL in LIMA or OpenAI messages format."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    {_WHERE}.
    The directory holds train.jsonl (1,030 records) and test.jsonl (300 prompts), and optionally
    dev.jsonl; your own data may use the same names, in LIMA's format
    ({{"conversations": [...], "source": ...}}) or OpenAI's ({{"messages": [{{"role", "content"}}]}}).
    """

    def __init__(self, *, skip_invalid: bool = False, **kwargs: Any) -> None:
        self._skip_invalid = skip_invalid
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup, for a builder defined inside a package, needs the `importlib_resources`
        # backport, which TFDS declares only for Python < 3.9: name this file directly instead.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: `dataset_info_from_configs` looks for metadata files beside the
        # module that defines the builder and fails when there are none.
        return tfds.core.DatasetInfo(
            builder=self,
            description="LIMA: Less Is More for Alignment (Zhou et al., 2023), 1,000 curated conversations.",
            features=tfds.features.FeaturesDict(
                {"conversations": tfds.features.Sequence(tfds.features.Text()), "source": tfds.features.Text()}
            ),
            homepage="https://huggingface.co/datasets/GAIR/lima",
            # Keep the files' order: records stay where the user put them (file line order).
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        manual = Path(dl_manager.manual_dir)
        splits = {}
        for split in SPLITS:
            path = manual / f"{split}.jsonl"
            if path.is_file():
                records, _ = read_conversations(path, skip_invalid=self._skip_invalid)
                if records:  # TFDS refuses to write an empty split
                    splits[split] = self._generate_examples(records)
        if not splits:
            raise LimaError(f"{manual}: no conversations in any of {', '.join(s + '.jsonl' for s in SPLITS)}; {_WHERE}")
        return splits

    def _generate_examples(self, records: list[Record]) -> Iterator[tuple[int, Record]]:
        yield from enumerate(records)


class Conversations(Sequence[Record]):
    """A TFDS data source seen as records of str (TFDS hands back bytes), with slicing."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    @overload
    def __getitem__(self, i: int) -> Record: ...
    @overload
    def __getitem__(self, i: slice) -> list[Record]: ...
    def __getitem__(self, i: int | slice) -> Record | list[Record]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for {n} records")
        return _decode(self._source[i % n])


def load_split(manual_dir: PathLike, split: str, *, cache_dir: str | pathlib.Path, skip_invalid: bool = False) -> tuple[Sequence[Record], int]:
    """The records of `split` (train, dev or test) and how many bad lines were skipped.

    Builds the TFDS dataset on first use, under `cache_dir/lima-<hash of the input files>`, and
    afterwards reads it back. The requested split is validated first, so a bad record stops the
    run with `file:line` before anything is built or compiled. `manual_dir` may be on gs://;
    `cache_dir` is local (the prepared files are read back at random).
    """
    manual = user_path(manual_dir)
    if split not in SPLITS:
        raise LimaError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not manual.is_dir():
        raise LimaError(f"data directory {manual} not found; {_WHERE}")
    path = manual / f"{split}.jsonl"
    if not path.is_file():
        raise LimaError(f"{path} not found; {_WHERE}")
    records, skipped = read_conversations(path, skip_invalid=skip_invalid)
    if not records:
        raise LimaError(f"{path}: no conversations in the file")

    data_dir = pathlib.Path(cache_dir).expanduser() / f"lima-{input_hash(manual)}"
    # The builder skips bad lines in every split: the requested one was just checked with the
    # caller's `skip_invalid`, and its output depends only on the files, as the cache key does.
    builder = Lima(data_dir=str(data_dir), file_format="array_record", skip_invalid=True)
    # What `builder.is_prepared()` checks, without its warning about a folder not built yet.
    if not (pathlib.Path(builder.data_dir) / "dataset_info.json").is_file():
        with _quiet():
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual)))
        logging.info("prepared the TFDS dataset of %s in %s", manual, data_dir)
    return Conversations(builder.as_data_source(split)), skipped


def input_hash(manual_dir: PathLike) -> str:
    """A short hash of the split files' names and contents (and the builder's format)."""
    h = hashlib.sha256(f"{_FORMAT}:{Lima.VERSION}".encode())
    for split in SPLITS:
        path = Path(manual_dir) / f"{split}.jsonl"
        if path.is_file():
            h.update(f"\0{split}\0{path.stat().length}\0".encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def dev_split(records: Sequence[Record], n: int, seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded hold-out of `n` records (LIMA chose its checkpoint on 50 dev examples).

    Both parts keep the records' original order.
    """
    if n < 0:
        raise LimaError(f"config key data.dev_size: must be >= 0, got {n}")
    if n >= len(records):
        raise LimaError(
            f"config key data.dev_size: holding out {n} dev examples leaves none of the {len(records)} records to train on; "
            f"set --config.data.dev_size below {len(records)}, or put a dev.jsonl beside the training data"
        )
    held = np.zeros(len(records), bool)
    held[np.random.default_rng(seed).permutation(len(records))[:n]] = True
    train = [records[i] for i in range(len(records)) if not held[i]]
    dev = [records[i] for i in range(len(records)) if held[i]]
    return train, dev


def _decode(example: dict[str, Any]) -> Record:
    def text(x: Any) -> str:
        return x.decode("utf-8") if isinstance(x, bytes) else str(x)

    return {"conversations": [text(t) for t in example["conversations"]], "source": text(example["source"])}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No TFDS progress bars or banners ("Downloading ... Unknown size") for a local build of a few
    hundred records; the progress-bar setting is restored after."""
    was = getattr(tqdm_utils, "_active", True)  # private, but the public API only sets it
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(was)
