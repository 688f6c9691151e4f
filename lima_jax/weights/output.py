"""Where an export lands: never over its own input, and over a previous export only file by file, so that
`--overwrite` replaces what an export writes and keeps everything else a folder holds."""
from __future__ import annotations

import fnmatch
import os
from typing import Callable

from lima_jax.errors import LimaError
from lima_jax.storage.paths import Path, PathLike, is_cloud, user_path

# What each export writes (a previous export's files of these names are its own, stale shards included).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "tokenizer.tiktoken")
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
            "model.safetensors.index.json", "shard-*.safetensors.tmp", *TOKENIZER_FILES)
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors", "generation_config.json", *TOKENIZER_FILES)
CHECKPOINT_FILES = ("params", "model", "checksums", "_CHECKPOINT_METADATA", *TOKENIZER_FILES)


def check_not_input(out: Path, src: Path, what: str = "output") -> None:
    """Refuses an output that is the input or a folder holding it (a run's workdir for one of its steps);
    `what` names the output."""
    def parts(path: Path) -> tuple[str, ...]:
        text = str(path) if is_cloud(path) else os.path.realpath(path)
        return tuple(p for p in text.rstrip("/").split("/") if p)

    if parts(src)[: len(parts(out))] == parts(out):
        raise LimaError(f"{what} {out} is or holds the input {src}; choose an output outside it")


def replace_export(out: PathLike, write: Callable[[Path], object], own: tuple[str, ...]) -> Path:
    """Runs `write(folder)` into a fresh folder beside `out` and moves the result in: a new `out` whole, or
    into an existing one, replacing the entries named by `own` (glob patterns) and keeping the rest. A
    write that fails leaves `out` as it was. In a bucket (no renames) the previous export's own entries
    are deleted first and the export is written in place."""
    out = user_path(out)
    if is_cloud(out):
        if out.exists():
            for entry in _own_entries(out, own):
                _remove(entry)
        write(out)
        return out
    staged = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staged.exists():
        staged.rmtree()
    try:
        write(staged)
        if not out.exists():
            staged.rename(out)
            return out
        written = {entry.name for entry in staged.iterdir()}
        for entry in _own_entries(out, own):
            if entry.name not in written:  # a stale shard or index of the previous export
                _remove(entry)
        for name in written:
            target = out / name
            if target.is_dir():
                target.rmtree()
            os.replace(staged / name, target)
        return out
    finally:
        if staged.exists():
            staged.rmtree()


def _own_entries(folder: Path, own: tuple[str, ...]) -> list[Path]:
    return [entry for entry in folder.iterdir() if any(fnmatch.fnmatch(entry.name, pattern) for pattern in own)]


def _remove(entry: Path) -> None:
    if entry.is_dir():
        entry.rmtree()
    else:
        entry.unlink()
