"""Training throughput and MFU of the real train step, and decode speed of the sampler, each side by
side with PyTorch (`transformers`); prints one JSON line.

    python -m lima_jax.bench --config=tiny --shape=ci --seq_len=512 --batch_size=4
    python -m lima_jax.bench --config=tiny --shape=ci --mode=decode [--dtype=bfloat16]
    python -m lima_jax.bench --config=tiny --shape=ci --mode=serve     # or --checkpoint=CKPT
    python -m lima_jax.bench --mode=device    # all of them and the attention kernels' numerics, at its own shapes

What each mode measures and how: `lima_jax.bench.train`, `lima_jax.bench.decode`, `lima_jax.bench.serve`,
`lima_jax.bench.device`.
"""
from __future__ import annotations

import json
import os
import sys

from absl import flags

from lima_jax.bench import SHAPES, TORCH_ATTENTION
from lima_jax.cli import define_config_flag, define_dtype_flag, no_arguments, run
from lima_jax.errors import LimaError

MODES = ("train", "decode", "serve", "device")
_CONFIG = define_config_flag("config", None)
_MODE = flags.DEFINE_enum("mode", "train", list(MODES), "train: the train step's throughput and MFU; decode: the sampler's "
                          "tokens/s, TTFT and roofline; serve: the server's requests/s, tokens/s and latency; device: a one-call "
                          "accelerator check (attention numerics, full and LoRA train steps, decode, serve) at its own "
                          "shapes, under 8 minutes")
_SHAPE = flags.DEFINE_enum("shape", "none", list(SHAPES), "model overrides for a named shape (ci: dim 512, 8 layers, vocab 32000, no dropout); --config.* flags win")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 512, "tokens per row")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4, "rows per step")
_STEPS = flags.DEFINE_integer("steps", 7, "train: timed rounds, each one step of ours and one of torch (and a matmul "
                               "peak probe on a CPU); figures are medians, ratios medians of the rounds' ratios")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps after compiling (each framework)")
_COMPARE_TORCH = flags.DEFINE_bool("compare_torch", None, "also time transformers.LlamaForCausalLM (default: on a CPU, when torch imports)")
_TORCH_ATTENTION = flags.DEFINE_enum("torch_attention", "auto", list(TORCH_ATTENTION), "torch attention; auto times one step of each and keeps the faster")
_SEED = flags.DEFINE_integer("seed", 0, "for the random tokens")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 16, "decode: prompt tokens per row")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "decode: tokens generated per row")
_DECODE_BATCHES = flags.DEFINE_list("decode_batches", ["1", "16"], "decode: batch sizes (the first is the roofline's)")
_COMPILE_LAYERS = flags.DEFINE_list("compile_layers", ["8", "80"], "decode: depths whose decode compile time is measured "
                                    "(tiny width); the record gives the last over the first")
_DTYPE = define_dtype_flag()
_REPEATS = flags.DEFINE_integer("repeats", 3, "decode: timed rounds (each framework); figures are medians")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "serve: the checkpoint to serve (default: a random model of --config)")
_CONCURRENCY = flags.DEFINE_list("concurrency", ["1", "4", "16"], "serve: concurrent clients, one round each")
_REQUESTS = flags.DEFINE_integer("requests", 4, "serve: timed requests per client in each round")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if _MODE.value == "device":
        if _CONFIG.value is not None or _CHECKPOINT.value:
            raise LimaError("--mode=device picks its own model (lima_jax/bench/device.py): drop --config and --checkpoint")
    elif _CONFIG.value is None and not (_MODE.value == "serve" and _CHECKPOINT.value):
        raise LimaError("--config is required, e.g. --config=tiny --shape=ci")
    if _DTYPE.value != "auto" and _MODE.value != "decode":
        raise LimaError("--dtype is for --mode=decode (training computes in --config.model.dtype)")
    import jax  # after the flags are checked: --help and bad flags answer at once

    from lima_jax.bench.train import apply_shape, bench, decode_bench, explicit_overrides, parse_batches

    config = _CONFIG.value
    if config is not None:
        apply_shape(config, _SHAPE.value, explicit_overrides(sys.argv))
        if _DTYPE.value != "auto":  # both frameworks hold and compute the model in it
            config.model.dtype = config.model.param_dtype = _DTYPE.value
    common = {"compare_torch": _COMPARE_TORCH.value, "seed": _SEED.value, "shape": _SHAPE.value}
    if _MODE.value == "device":
        from lima_jax.bench.device import device_check

        record = device_check(seed=_SEED.value)
    elif _MODE.value == "serve":
        from lima_jax.bench.serve import serve_bench_record

        record = serve_bench_record(config, _CHECKPOINT.value, _SHAPE.value,
                                    concurrency=parse_batches(_CONCURRENCY.value, "--concurrency"),
                                    requests=_REQUESTS.value, prompt_len=_PROMPT_LEN.value,
                                    new_tokens=_NEW_TOKENS.value, seed=_SEED.value)
    elif _MODE.value == "decode":
        record = decode_bench(config, batches=parse_batches(_DECODE_BATCHES.value), prompt_len=_PROMPT_LEN.value,
                              new_tokens=_NEW_TOKENS.value, repeats=_REPEATS.value,
                              compile_layers=parse_batches(_COMPILE_LAYERS.value, "--compile_layers"), **common)
    else:
        record = bench(config, seq_len=_SEQ_LEN.value, batch_size=_BATCH_SIZE.value, steps=_STEPS.value,
                       warmup=_WARMUP.value, torch_attention=_TORCH_ATTENTION.value, **common)
    if jax.process_index() == 0:
        print(json.dumps(record), flush=True)
    if record.get("failed"):  # the device check: its report is out; a part left running must not hold the exit
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    run(main)
