"""Weights in and out: Hugging Face, Meta, llama2.c or GGUF -> an Orbax checkpoint, and back to Hugging
Face or GGUF (the library behind `python -m lima_jax.convert`).

The architecture comes from the input (config.json, params.json, the .bin header) and its tensor
shapes; `--config=NAME` imposes one instead (then every shape is checked against it). Tensors keep
their stored dtype unless `--dtype` says otherwise. A fine-tuned run exported to Hugging Face keeps
its end-of-turn token, LIMA's chat template and stops at EOT (`weights/hf_chat.py`). A LoRA run exports
as the merged model (hf, gguf: its adapters merged into the base it trained against, a QLoRA base
dequantized) or as its adapters alone for `peft` (`weights/peft.py`). Outputs may go to
`gs://`; of the inputs, a lima_jax checkpoint may be there (the other formats are memory-mapped from local files).
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lima_jax.data.tokenizer import ChatTokenizer, of_model
from lima_jax.errors import LimaError, namer
from lima_jax.model import ModelConfig
from lima_jax.storage.paths import Path, check_writable, is_cloud, user_path
from lima_jax.weights import checkpoint, gguf, hf, llama2c, meta, peft
from lima_jax.weights.names import params_from_hf
from lima_jax.weights.output import CHECKPOINT_FILES, HF_FILES, PEFT_FILES, check_not_input, replace_export


def detect_format(path: Path) -> str | None:
    """The input's format, told from its files; None when they say nothing."""
    if path.is_file() and path.suffix == ".bin":
        return "llama2c"
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if checkpoint.is_checkpoint(path) or (path / checkpoint.STEPS_DIR).is_dir():
        return "orbax"
    if (path / hf.CONFIG).is_file():
        return "hf"
    if (path / "params.json").is_file():
        return "meta"
    return None


def read_weights(path: Path, fmt: str, imposed: ModelConfig | None) -> tuple[ModelConfig, dict]:
    """The model config and parameter tree (numpy, stored dtypes) of any supported input."""
    if fmt == "orbax":
        cfg, params = checkpoint.load_params(path, imposed, keep_dtype=True)
        return cfg, jax.tree.map(np.asarray, params)
    reader = {"hf": hf.read, "meta": meta.read, "llama2c": llama2c.read, "gguf": gguf.read}[fmt]
    found, names, get = reader(path)
    cfg = found if imposed is None else imposed
    return cfg, params_from_hf(names, get, cfg, source=str(path))


def find_tokenizer(path: Path, fmt: str, scratch: Path) -> Path | None:
    """The tokenizer beside the weights: an HF folder's tokenizer.json (with its config), else a
    tokenizer.model (Meta's release keeps it one level up). A GGUF file holds its own, rebuilt as
    files in `scratch`."""
    if fmt == "orbax":
        return checkpoint.tokenizer_path(path)
    if fmt == "gguf":
        return gguf.extract_tokenizer(path, scratch)
    folder = path.parent if path.is_file() else path
    if (folder / "tokenizer.json").is_file():
        return folder
    for candidate in (folder / "tokenizer.model", folder.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def convert(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    input_format: str = "auto",
    output_format: str = "orbax",
    imposed: ModelConfig | None = None,
    tokenizer: str | os.PathLike | None = None,
    dtype: str = "keep",
    max_shard_bytes: int = 5 * 10**9,
    overwrite: bool = False,
    names: Mapping[str, str] | None = None,
) -> Path:
    """Converts weights; returns the written path. Errors name an argument as `errors.namer(names)` does
    (the command passes its flags)."""
    name = namer(names)
    src, out = user_path(input_path), user_path(output)
    fmt = _checked_format(src, out, input_format, output_format, overwrite, name)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = tokenizer or find_tokenizer(src, fmt, Path(scratch))
        if tokenizer is not None and not Path(tokenizer).exists():
            raise LimaError(f"{name('tokenizer')} {tokenizer}: no such file or folder")

        if output_format == "peft":  # the adapters alone: the base's weights are not read
            step = checkpoint.resolve(src)
            chat, eot_id = _chat(tokenizer, checkpoint.load_model_config(step), checkpoint.run_info(step))
            return replace_export(out, lambda folder: peft.write(folder, step, tokenizer=chat, eot_id=eot_id, dtype=dtype),
                                  PEFT_FILES)
        cfg, params = read_weights(src, fmt, imposed)
        if dtype != "keep":
            params = jax.tree.map(lambda a: np.asarray(a).astype(jnp.dtype(dtype)), params)
        logging.info("read %s (%s): %d layers, dim %d, vocab %d", src, fmt, cfg.num_layers, cfg.dim, cfg.vocab_size)
        run = checkpoint.run_info(src) if fmt == "orbax" else {}  # a fine-tuned run's EOT and chat format
        if output_format == "hf":
            chat, eot_id = _chat(tokenizer, cfg, run)
            return replace_export(out, lambda folder: hf.write(folder, params, cfg, tokenizer=chat, eot_id=eot_id,
                                                               max_shard_bytes=max_shard_bytes, overwrite=True), HF_FILES)
        if output_format == "gguf":  # one file, written beside and renamed over the old one
            return gguf.write(out, params, cfg, tokenizer=tokenizer, eot_id=run.get("eot_id"),
                              chat_format=run.get("chat_format", "lima"), overwrite=overwrite, names=names)
        return replace_export(out, lambda folder: checkpoint.save(folder, params, cfg, tokenizer=tokenizer, overwrite=True),
                              CHECKPOINT_FILES)


def _checked_format(src: Path, out: Path, input_format: str, output_format: str, overwrite: bool,
                    name: Callable[[str], str]) -> str:
    """The input's format, once the input, the output and the formats asked for are known to fit, before
    any weight is read."""
    if not src.exists():
        raise LimaError(f"{name('input')} {src}: no such file or directory")
    check_not_input(out, src, name("output"))
    if out.exists() and not overwrite:
        raise LimaError(f"{name('output')} {out} already exists; choose a new path (or pass {name('overwrite')})")
    # A folder that cannot take the output is named as the user wrote it, not as the hidden staging
    # folder beside it that the export would first fail to create.
    check_writable(out.parent, f"{name('output')} {out}: its folder")
    fmt = detect_format(src) if input_format == "auto" else input_format
    if fmt is None:
        raise LimaError(f"{src}: cannot tell its format (no config.json, params.json or checkpoint); "
                        f"pass {name('input_format')}")
    if output_format == "orbax" and fmt == "orbax":
        raise LimaError(f"the input is already a lima_jax checkpoint; pass {name('output_format')}=hf or gguf to export it")
    if output_format == "peft" and not (fmt == "orbax" and checkpoint.is_adapter(checkpoint.resolve(src))):
        raise LimaError(f"{name('input')} {src}: not a LoRA run or step (it holds a full model); "
                        f"{name('output_format')}=peft exports a LoRA run's adapters: pass {name('output_format')}=hf or gguf")
    if fmt != "orbax" and is_cloud(src):
        raise LimaError(f"{name('input')} {src}: {fmt} weights are memory-mapped from local files; copy them to this machine first")
    return fmt


def _chat(tokenizer: Path | None, cfg: ModelConfig, run: dict) -> tuple[ChatTokenizer | None, int | None]:
    """The tokenizer as the model used it (None without one) and the model's EOT id."""
    return of_model(tokenizer, cfg.used_vocab_size, run) if tokenizer is not None else (None, run.get("eot_id"))
