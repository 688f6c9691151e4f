"""The real job, checked on a laptop before a pod is booked (`python -m lima_jax.train --dry_run`).

It finds what the pod run would find wrong, in the order the run meets it, and writes nothing: the
data (file:line errors) and the tokenizer; the init checkpoint's architecture, vocabulary and tensor
shapes (from its metadata: no array is read); that the workdir can be written and holds no other
run. Then it compiles the exact step for the TPU topology, with the vocabulary the tokenizer gives
and the rows the data packs into for that slice's hosts, and reports it as `lima_jax.aot` does.
"""
from __future__ import annotations

import pathlib
import tempfile

import ml_collections

from lima_jax import sharding
from lima_jax.config import prepare
from lima_jax.data import pipeline
from lima_jax.storage.paths import user_path
from lima_jax.train.aot import compile_report, topology_devices
from lima_jax.train.init_weights import check_pretrained
from lima_jax.train.run_dir import check_same_inputs, check_same_run, check_workdir
from lima_jax.train.vocab import tokenizer_for, trained_model_config


def dry_run(config: ml_collections.ConfigDict, topology: str) -> dict:
    """Checks the run `config` describes and compiles its step for `topology`; returns `aot`'s report
    with what the data gave (examples, steps, hosts)."""
    prepare(config, "tpu")  # a TPU step, compiled on this host
    workdir = user_path(config.workdir)
    check_workdir(workdir)
    if workdir.is_dir():
        check_same_run(config, workdir)
    _, devices = topology_devices(topology)
    mesh = sharding.make_mesh(config.mesh.to_dict(), devices)
    hosts = len({d.process_index for d in devices})
    row_multiple = sharding.check_batch_fits_mesh(config.batch_size, config.grad_accum, mesh, hosts)
    tokenizer_path = tokenizer_for(config)
    with tempfile.TemporaryDirectory(prefix="lima_dry_run_") as cache:  # TFDS prepares the data here, not in the workdir
        data = pipeline.build(
            config, tokenizer_path=tokenizer_path, process_index=0, process_count=hosts,
            row_multiple=row_multiple, eval_rows=1, cache_dir=pathlib.Path(cache),
        )
    if workdir.is_dir():
        check_same_inputs(data.fingerprint, workdir)
    pieces = data.tokenizer.num_pieces
    if config.init_checkpoint:
        check_pretrained(config, trained_model_config(config, pieces))
    batcher = data.batcher
    report = compile_report(
        config, topology, batcher.total_steps, pieces=pieces, tokenizer=str(data.tokenizer.path),
        rows=batcher.rows_per_host * hosts,
    )
    return {
        **report,
        "dry_run": {"hosts": hosts, "train_examples": data.num_train, "dev_examples": data.num_dev,
                    "skipped": data.skipped, "steps": batcher.total_steps, "init_checkpoint": config.init_checkpoint or None},
    }
