"""The LIMA supervised fine-tuning run.

    python -m lima_jax.train --config=tiny                      # embedded demo data, CPU, minutes
    python -m lima_jax.train --config=65b --config.init_checkpoint=gs://.../llama-65b \
        --config.data.manual_dir=/data/lima --config.data.tokenizer=/data/tokenizer.model \
        --config.workdir=gs://.../runs/lima-65b                 # every TPU worker runs the same line

A run restarted with the same workdir continues exactly where it stopped; SIGTERM (a preemption)
saves and exits cleanly. The run itself is `lima_jax.train.loop.train`.
"""
from __future__ import annotations

import json

import jax
from absl import flags

from lima_jax import sharding
from lima_jax.cli import no_arguments, run
from lima_jax.config import define_config_flag
from lima_jax.train.loop import train

_CONFIG = define_config_flag("config", "tiny")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-node GPU runs")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "the number of processes (hosts), with --coordinator_address")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index, with --coordinator_address")
_DISTRIBUTED = flags.DEFINE_bool("distributed", None, "initialise JAX's multi-controller runtime (default: on TPU pods and under SLURM)")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if _COORDINATOR.value or _DISTRIBUTED.value:
        sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value is None and sharding.launched_on_cluster():
        sharding.initialize_distributed(None, None, None)
    last = train(_CONFIG.value)
    if last and jax.process_index() == 0:
        print(json.dumps({"final_step": last["step"], "loss": last["loss"]}))


if __name__ == "__main__":
    run(main)
