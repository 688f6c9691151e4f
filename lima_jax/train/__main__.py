r"""The LIMA supervised fine-tuning run.

    python -m lima_jax.train --config=tiny                      # embedded demo data, CPU, minutes
    python -m lima_jax.train --config=65b --config.init_checkpoint=gs://.../llama-65b \
        --config.data.manual_dir=/data/lima --config.data.tokenizer=/data/tokenizer.model \
        --config.workdir=gs://.../runs/lima-65b                 # every TPU worker runs the same line

    python -m lima_jax.train --config=65b --dry_run --topology=v4-128 [overrides]
                                                                # on a laptop, before booking the pod

A run restarted with the same workdir continues exactly where it stopped; SIGTERM (a preemption)
saves and exits cleanly. The run itself is `lima_jax.train.loop.train`. `--dry_run` checks the
data, tokenizer, init checkpoint and workdir, compiles the exact step for `--topology`, prints
`lima_jax.aot`'s JSON (exit 1 if it does not fit) and writes nothing (`lima_jax.train.dry_run`).
"""
from __future__ import annotations

import json

from absl import flags

from lima_jax.storage import compile_cache
from lima_jax.cli import define_config_flag, define_distributed_flags, no_arguments, run
from lima_jax.errors import LimaError

_CONFIG = define_config_flag("config", "tiny")
_DISTRIBUTED = define_distributed_flags()
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "check everything and compile the step for --topology; train nothing, write nothing")
_TOPOLOGY = flags.DEFINE_string("topology", None, "with --dry_run: the TPU slice to compile for, e.g. v4-128")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if _DRY_RUN.value:
        dry_run()
        return
    import jax  # after the flags are checked: --help and bad flags answer at once

    from lima_jax.train.loop import train

    if _DISTRIBUTED.start():  # a pod: a slice restarted on fresh machines finds the compiled step in the workdir
        compile_cache.use_run_dir(_CONFIG.value.workdir)
    last = train(_CONFIG.value)
    if jax.process_index() == 0:  # finished or preempted: the last line says which
        print(json.dumps({"status": last["status"], "final_step": last.get("step"), "loss": last.get("loss")}, allow_nan=False))


def dry_run() -> None:
    if not _TOPOLOGY.value:
        raise LimaError("--dry_run needs --topology (a TPU slice such as v4-128)")
    from lima_jax.train.aot import BadTopology, compile_offline, print_report
    from lima_jax.train.dry_run import dry_run as check_and_compile

    compile_offline()  # before JAX first loads a backend
    try:
        report = check_and_compile(_CONFIG.value, _TOPOLOGY.value)
    except BadTopology as e:
        raise LimaError(f"--topology {e}") from None
    print_report(report)


if __name__ == "__main__":
    run(main)
