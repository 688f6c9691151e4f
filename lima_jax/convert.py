"""Weights in and out: Hugging Face, Meta, llama2.c or GGUF -> an Orbax checkpoint, and back to Hugging
Face or GGUF (for llama.cpp and Ollama).

    python -m lima_jax.convert --input=llama-65b --input_format=meta --output=ckpt/llama-65b
    python -m lima_jax.convert --input=ckpt/llama-65b --output_format=hf --output=hf/llama-65b
    python -m lima_jax.convert --input=llama-2-7b.Q4_K_M.gguf --output=ckpt/llama-2-7b
    python -m lima_jax.convert --input=runs/lima-7b --output_format=gguf --dtype=float16 --output=lima-7b.gguf
    python -m lima_jax.convert --input=runs/lima-7b-lora --output_format=peft --output=lima-7b-lora

The architecture comes from the input (config.json, params.json, the .bin header) and its tensor
shapes, unless `--config=NAME` imposes one; tensors keep their stored dtype unless `--dtype` says
otherwise. A LoRA run exports merged (`hf`, `gguf`) or as PEFT adapters (`peft`). The work is
`lima_jax.weights.convert.convert`; the README's "Weights in and out" and "One accelerator" say what
each format holds and how transformers and PEFT load it."""
from __future__ import annotations

from absl import flags

from lima_jax.cli import check_exists, define_config_flag, no_arguments, run
from lima_jax.config import model_config, prepare
from lima_jax.errors import LimaError

INPUT_FORMATS = ("auto", "hf", "meta", "llama2c", "gguf", "orbax")
OUTPUT_FORMATS = ("orbax", "hf", "gguf", "peft")

_INPUT = flags.DEFINE_string("input", None, "a Hugging Face folder, a Meta folder, a llama2.c .bin, a .gguf file, or a lima_jax checkpoint")
_INPUT_FORMAT = flags.DEFINE_enum("input_format", "auto", INPUT_FORMATS, "the input's format; auto detects it")
_OUTPUT = flags.DEFINE_string("output", None, "where to write; an existing path is never overwritten unless --overwrite")
_OUTPUT_FORMAT = flags.DEFINE_enum("output_format", "orbax", OUTPUT_FORMATS,
                                   "a lima_jax (Orbax) checkpoint, a Hugging Face folder, one GGUF file (F32/F16/BF16), "
                                   "or a LoRA run's adapters for peft")
_CONFIG = define_config_flag("config", None)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "the tokenizer to keep with the output: a tokenizer.model, a tokenizer.json or its folder (found beside the input by default)")
_DTYPE = flags.DEFINE_enum("dtype", "keep", ("keep", "float32", "bfloat16", "float16"), "the dtype of the written tensors")
_MAX_SHARD = flags.DEFINE_string("max_shard_size", "5GB", "largest safetensors shard for --output_format=hf")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing output")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not _INPUT.value or not _OUTPUT.value:
        raise LimaError("--input and --output are required")
    check_exists(_INPUT.value, "--input")
    imposed = None
    if _CONFIG.value is not None:
        prepare(_CONFIG.value)
        imposed = model_config(_CONFIG.value)
    from lima_jax.weights.convert import convert  # JAX: after the flags are checked

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
        names={name: f"--{name}" for name in ("input", "output", "overwrite", "input_format", "output_format", "tokenizer", "dtype")},
    )
    print(f"wrote {out}")


def parse_size(text: str) -> int:
    """`--max_shard_size` in bytes: 5GB, 500MB, 2GiB or a plain number."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit) and t[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * factor)
    if t.isdigit():
        return int(t)
    raise LimaError(f"--max_shard_size: cannot read {text!r} (e.g. 5GB, 500MB)")


if __name__ == "__main__":
    run(main)
