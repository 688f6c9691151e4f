"""Compile the real train step for a TPU slice on a CPU host, and report whether it fits.

    python -m lima_jax.aot --config=65b --topology=v4-128 [--config.data.tokenizer=tokenizer.model]

No TPU is needed: libtpu describes the slice's devices and XLA compiles the step exactly as the slice
would (`lima_jax.train.aot`). The model compiled is the one training builds (the tokenizer's pieces
plus EOT, padded to `model.vocab_multiple`); a LoRA run's step compiles with its frozen base built from
shapes alone. `--topology=v5p-2` is one chip, the nearest stand-in for one 80 GB GPU. Prints one JSON
object (per-chip bytes against the chip's HBM, compile seconds, XLA's cost analysis, the vocabulary,
mesh, batch and remat compiled) and exits 1 when the step does not fit."""
from __future__ import annotations

from absl import flags

from lima_jax.cli import define_config_flag, no_arguments, run
from lima_jax.errors import LimaError

_CONFIG = define_config_flag("config", None)
_TOPOLOGY = flags.DEFINE_string("topology", "v4-8", "a TPU slice, e.g. v4-128, v5p-256, v5litepod-64, v6e-16, v5p-2 (one chip)")
_STEPS = flags.DEFINE_integer("total_steps", 1000, "run length, for the learning-rate schedule only")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if _CONFIG.value is None:
        raise LimaError("--config is required")
    from lima_jax.config import prepare
    from lima_jax.train.aot import BadTopology, compile_offline, compile_report, print_report  # JAX: after the flags are checked

    compile_offline()  # before JAX first loads a backend
    prepare(_CONFIG.value, "tpu")  # a TPU step, compiled on this host
    try:
        report = compile_report(_CONFIG.value, _TOPOLOGY.value, _STEPS.value)
    except BadTopology as e:
        raise LimaError(f"--topology {e}") from None
    print_report(report)


if __name__ == "__main__":
    run(main)
