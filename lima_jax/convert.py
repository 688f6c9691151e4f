"""Weights in and out: Hugging Face, Meta or llama2.c -> an Orbax checkpoint, and back to Hugging Face.

    python -m lima_jax.convert --input=llama-65b --input_format=meta --output=ckpt/llama-65b
    python -m lima_jax.convert --input=ckpt/llama-65b --output_format=hf --output=hf/llama-65b

The architecture comes from the input (config.json, params.json, the .bin header) and its tensor
shapes; `--config=NAME` imposes one instead (then every shape is checked against it). Tensors keep
their stored dtype unless `--dtype` says otherwise.
"""
from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from lima_jax import checkpoint, hf_format, llama2c_format, meta_format
from lima_jax.config import define_config_flag, model_config, validate
from lima_jax.cli import run
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig
from lima_jax.weights import params_from_hf

INPUT_FORMATS = ("auto", "hf", "meta", "llama2c", "orbax")

_INPUT = flags.DEFINE_string("input", None, "a Hugging Face folder, a Meta folder, a llama2.c .bin, or a lima_jax checkpoint")
_INPUT_FORMAT = flags.DEFINE_enum("input_format", "auto", INPUT_FORMATS, "the input's format; auto detects it")
_OUTPUT = flags.DEFINE_string("output", None, "where to write; an existing path is never overwritten unless --overwrite")
_OUTPUT_FORMAT = flags.DEFINE_enum("output_format", "orbax", ("orbax", "hf"), "a lima_jax (Orbax) checkpoint or a Hugging Face folder")
_CONFIG = define_config_flag("config", None)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "a sentencepiece tokenizer.model to keep with the output (found beside the input by default)")
_DTYPE = flags.DEFINE_enum("dtype", "keep", ("keep", "float32", "bfloat16", "float16"), "the dtype of the written tensors")
_MAX_SHARD = flags.DEFINE_string("max_shard_size", "5GB", "largest safetensors shard for --output_format=hf")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing output")


def detect_format(path: pathlib.Path) -> str:
    if path.is_file() and path.suffix == ".bin":
        return "llama2c"
    if checkpoint.is_checkpoint(path) or (path / checkpoint.STEPS_DIR).is_dir():
        return "orbax"
    if (path / hf_format.CONFIG).is_file():
        return "hf"
    if (path / "params.json").is_file():
        return "meta"
    raise LimaError(f"{path}: cannot tell its format (no config.json, params.json or checkpoint); pass --input_format")


def read_weights(path: pathlib.Path, fmt: str, imposed: ModelConfig | None) -> tuple[ModelConfig, dict]:
    """The model config and parameter tree (numpy, stored dtypes) of any supported input."""
    if fmt == "orbax":
        cfg, params = checkpoint.load_params(path, imposed, keep_dtype=True)
        return cfg, jax.tree.map(np.asarray, params)
    reader = {"hf": hf_format.read, "meta": meta_format.read, "llama2c": llama2c_format.read}[fmt]
    found, names, get = reader(path)
    cfg = found if imposed is None else imposed
    return cfg, params_from_hf(names, get, cfg, source=str(path))


def find_tokenizer(path: pathlib.Path, fmt: str) -> pathlib.Path | None:
    """tokenizer.model beside the weights (Meta's release keeps it one level up)."""
    if fmt == "orbax":
        return checkpoint.tokenizer_path(path)
    folder = path.parent if path.is_file() else path
    for candidate in (folder / "tokenizer.model", folder.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit) and t[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * factor)
    if t.isdigit():
        return int(t)
    raise LimaError(f"--max_shard_size: cannot read {text!r} (e.g. 5GB, 500MB)")


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
) -> pathlib.Path:
    """Converts weights; returns the written path."""
    src = pathlib.Path(input_path)
    if not src.exists():
        raise LimaError(f"--input {src}: no such file or directory")
    out = pathlib.Path(output)
    if out.exists() and not overwrite:
        raise LimaError(f"--output {out} already exists; choose a new path (or pass --overwrite)")
    fmt = detect_format(src) if input_format == "auto" else input_format
    if output_format == "orbax" and fmt == "orbax":
        raise LimaError("the input is already a lima_jax checkpoint; pass --output_format=hf to export it")
    tokenizer = tokenizer or find_tokenizer(src, fmt)
    if tokenizer is not None and not pathlib.Path(tokenizer).is_file():
        raise LimaError(f"--tokenizer {tokenizer}: no such file")

    cfg, params = read_weights(src, fmt, imposed)
    if dtype != "keep":
        params = jax.tree.map(lambda a: np.asarray(a).astype(jnp.dtype(dtype)), params)
    logging.info("read %s (%s): %d layers, dim %d, vocab %d", src, fmt, cfg.num_layers, cfg.dim, cfg.vocab_size)
    if output_format == "hf":
        return hf_format.write(out, params, cfg, tokenizer=tokenizer, max_shard_bytes=max_shard_bytes, overwrite=overwrite)
    return checkpoint.save(out, params, cfg, tokenizer=tokenizer, overwrite=overwrite)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise LimaError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _INPUT.value or not _OUTPUT.value:
        raise LimaError("--input and --output are required")
    imposed = None
    if _CONFIG.value is not None:
        validate(_CONFIG.value)
        imposed = model_config(_CONFIG.value)
    out = convert(
        _INPUT.value,
        _OUTPUT.value,
        input_format=_INPUT_FORMAT.value,
        output_format=_OUTPUT_FORMAT.value,
        imposed=imposed,
        tokenizer=_TOKENIZER.value,
        dtype=_DTYPE.value,
        max_shard_bytes=parse_size(_MAX_SHARD.value),
        overwrite=_OVERWRITE.value,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main)
