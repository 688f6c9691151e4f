"""The LIMA supervised fine-tuning run (`python -m lima_jax.train`; see `train/__main__.py`).

`train(config)` reads top to bottom: check the config, the workdir and the data (all before compiling),
build the mesh and the state (fresh, from a pretrained checkpoint, or resumed from the workdir's latest
step), then loop, with the periodic work (log, dev loss, save) in a table of hooks. A run restarted
with the same workdir continues exactly where it stopped; SIGTERM (a preemption) saves and exits cleanly.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lima_jax import sharding
from lima_jax.model import flops
from lima_jax.config import prepare
from lima_jax.data import pipeline
from lima_jax.errors import LimaError
from lima_jax.log import say
from lima_jax.lora import spec as lora_spec
from lima_jax.lora.spec import LoraSpec
from lima_jax.model import ModelConfig
from lima_jax.storage.paths import Path, check_writable, user_path
from lima_jax.train import optimizer as optim
from lima_jax.train.checkpoints import RunCheckpoints
from lima_jax.train.hooks import Hooks
from lima_jax.train.init_weights import check_same_base, describe_lora, load_frozen_base, load_pretrained
from lima_jax.train.metrics import Diverged, MetricsWriter, StepLog, logged_loss
from lima_jax.train.preemption import Preemption, tell_every_host
from lima_jax.train.run_dir import WorkdirLock, check_same_run, write_dev_set, write_run_files
from lima_jax.train.state import (abstract_state, dev_loss, fresh_optimizer_state, init_adapters, init_state, jit_eval_step,
                                  jit_train_step, shardings_of, state_from_params, trained_dtype)
from lima_jax.train.step import TrainState
from lima_jax.weights import checkpoint
from lima_jax.train.vocab import tokenizer_for, trained_model_config


@dataclasses.dataclass
class Run:
    """What the loop runs: the checked config, its workdir, data, model and state."""
    config: ml_collections.ConfigDict
    resolved: dict  # the config as config.json holds it
    workdir: Path
    mesh: Any
    data: pipeline.TrainingData
    cfg: ModelConfig
    optimizer: Any
    ckpts: RunCheckpoints
    lora: LoraSpec | None = None
    frozen: Any = None  # a LoRA run's base
    lora_record: dict | None = None
    state: TrainState | None = None
    start: int = 0  # steps done before this process began


def train(config: ml_collections.ConfigDict) -> dict:
    """Runs (or resumes) the fine-tuning; returns the last step's metrics with `status`: `finished`
    or `preempted`. What it opens (the lock, the checkpoint manager, the metrics files, the signal
    handlers) is closed however it ends."""
    with contextlib.ExitStack() as opened:
        run = _start(config, opened)
        total = run.data.batcher.total_steps
        if run.start >= total:  # before anything is compiled or written: the rerun reports the run it finds
            say(f"{run.workdir} has finished: step {total} of {total} is saved; nothing to do")
            return {"status": "finished", "step": run.start, "loss": logged_loss(run.workdir, run.start)}
        if jax.process_index() == 0:
            run.data.tokenizer.save(run.workdir)
        return _loop(run, opened)


def _start(config: ml_collections.ConfigDict, opened: contextlib.ExitStack) -> Run:
    """Checks everything a run meets before compiling, writes the run's files, builds its state."""
    prepare(config, jax.default_backend())
    lora = lora_spec.from_config(config)
    workdir = user_path(config.workdir)
    if jax.process_index() == 0:  # a missing bucket or a denied write: one line now, not at the first checkpoint
        check_writable(workdir, "config key workdir:")
    opened.enter_context(WorkdirLock(workdir))  # before anything is written there
    resolved = check_same_run(config, workdir)  # before the data is prepared under the workdir
    mesh = sharding.make_mesh(config.mesh.to_dict())
    data = _build_data(config, mesh)
    if config.init_checkpoint:
        checkpoint.resolve(config.init_checkpoint)  # a wrong path fails here, before compiling
    write_run_files(resolved, data.fingerprint, workdir)
    write_dev_set(data.dev_records, workdir)
    cfg = trained_model_config(config, data.tokenizer.num_pieces)
    optimizer = optim.make_optimizer(config.optim, data.batcher.total_steps, trained_dtype(cfg, lora))
    ckpts = RunCheckpoints(workdir, max_to_keep=config.checkpoint.max_to_keep, async_save=config.checkpoint.async_save,
                           params_dtype=config.checkpoint.params_dtype)
    opened.callback(ckpts.close)  # waits for a save in flight
    run = Run(config, resolved, workdir, mesh, data, cfg, optimizer, ckpts, lora)
    if lora is not None:  # the base first: which rows the adapters train depends on it
        run.lora, run.frozen, run.lora_record = load_frozen_base(config, cfg, mesh, lora)
    _initial_state(run)
    return run


def _build_data(config: ml_collections.ConfigDict, mesh) -> pipeline.TrainingData:
    """This host's share of the data, batched for `mesh`, and the line that describes it."""
    row_multiple = sharding.check_batch_fits_mesh(config.batch_size, config.grad_accum, mesh)
    data = pipeline.build(
        config,
        tokenizer_path=tokenizer_for(config),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        row_multiple=row_multiple,
        eval_rows=max(row_multiple, sharding.data_parallel_size(mesh) // jax.process_count() or 1),
    )
    batcher = data.batcher
    say(
        f"{data.num_train} training conversations from {data.source} and {data.num_dev} dev conversations "
        f"{data.dev_source} "
        f"({data.skipped} invalid skipped); {batcher.total_steps} steps of {config.batch_size} examples in "
        f"{batcher.rows_per_host} rows x {config.data.max_len} tokens per host; mesh {dict(mesh.shape)}"
    )
    return data


def _initial_state(run: Run) -> None:
    """The workdir's latest step, else adapters on the frozen base, the init checkpoint or a random init."""
    config, cfg, mesh, optimizer, lora = run.config, run.cfg, run.mesh, run.optimizer, run.lora
    abstract = abstract_state(cfg, optimizer, mesh, lora)
    resumed = run.ckpts.restore_latest(abstract.params, abstract.opt_state)
    if resumed:
        run.start, params, opt_state = resumed
        if lora is not None:
            check_same_base(run.ckpts.directory / str(run.start), run.lora_record)
        if opt_state is None:
            opt_state = fresh_optimizer_state(params, optimizer, cfg, mesh, run.start, lora)
            say(f"warning: checkpoint step {run.start} holds no optimizer state (only the latest step keeps one): "
                f"resuming from its parameters with fresh AdamW moments, the learning-rate schedule at step "
                f"{run.start}; the run will not match an uninterrupted one exactly")
        run.state = TrainState(jnp.asarray(run.start, jnp.int32), params, opt_state)
        say(f"resumed {run.workdir} at step {run.start} of {run.data.batcher.total_steps}")
    elif lora is not None:
        run.state = state_from_params(init_adapters(cfg, lora, mesh, config.seed, run.frozen), optimizer, cfg, mesh, lora)
    elif config.init_checkpoint:
        run.state = state_from_params(load_pretrained(config, cfg, mesh)[0], optimizer, cfg, mesh)
    else:
        run.state = init_state(cfg, optimizer, mesh, config.seed)


def _steps(run: Run):
    """The jitted train and eval steps; a LoRA run's take its frozen base as their last argument."""
    config, cfg, mesh, lora, frozen = run.config, run.cfg, run.mesh, run.lora, run.frozen
    if lora is not None:
        say(describe_lora(lora, run.state.params, frozen))
    frozen_shardings = None if frozen is None else shardings_of(frozen)
    schedule = optim.learning_rate(config.optim, run.data.batcher.total_steps)
    train_step = jit_train_step(config, cfg, run.optimizer, schedule, mesh, lora, frozen_shardings)
    eval_step = jit_eval_step(cfg, mesh, lora, frozen_shardings)
    if frozen is None:
        return train_step, eval_step
    return (lambda *args: train_step(*args, frozen)), (lambda *args: eval_step(*args, frozen))


def _hooks(run: Run, log: StepLog, writer: MetricsWriter, eval_step) -> Hooks:
    """What runs between steps: at each epoch end, every `checkpoint.every_steps` steps and on a stop, the
    pending step is logged (and found finite) before the state is saved, so after any kill metrics.jsonl
    holds every saved step and no non-finite state is ever saved; each epoch end adds its dev loss."""
    batcher, config = run.data.batcher, run.config
    epochs = {steps: i + 1 for i, steps in enumerate(batcher.epoch_end_steps())}  # steps done -> epoch
    every = config.checkpoint.every_steps
    run_meta = {"config": config.name, "eot_id": run.data.tokenizer.eot_id, "chat_format": run.data.tokenizer.chat_format,
                "total_steps": batcher.total_steps, "max_len": config.data.max_len}

    def evaluate(steps_done: int) -> None:
        batches = run.data.dev_batches
        writer.epoch(epochs[steps_done], steps_done, dev_loss(eval_step, run.state.params, batches, run.mesh) if batches else None)

    def save(steps_done: int) -> None:
        writer.sync()  # the records up to here first: a resume from this step keeps them
        meta = dict(run_meta, epoch=batcher.epoch_progress(steps_done))
        run.ckpts.save(steps_done, run.state.params, run.state.opt_state, run.cfg, meta, lora=run.lora_record)

    hooks = Hooks()
    hooks.add(log.flush, every=every, at=epochs, on_stop=True)
    hooks.add(evaluate, at=epochs)
    hooks.add(save, every=every, at=epochs, on_stop=True)
    return hooks


def _wandb(run: Run):
    """Process 0's W&B run when `log.wandb` names a project (imported only then), else None."""
    if jax.process_index() != 0 or not run.config.log.wandb:
        return None
    from lima_jax.train.wandb_sink import WandbSink

    return WandbSink(run.config, run.resolved, run.workdir)


def _loop(run: Run, opened: contextlib.ExitStack) -> dict:
    train_step, eval_step = _steps(run)
    batcher, mesh, total = run.data.batcher, run.mesh, run.data.batcher.total_steps
    writer = MetricsWriter(run.workdir, resume_step=run.start, total_steps=total, enabled=jax.process_index() == 0,
                           sink=_wandb(run))
    opened.callback(writer.close)
    flops_per_token = flops.train_flops_per_token(run.cfg, run.config.data.max_len, frozen=run.lora is not None)
    peak = flops.peak_tflops(jax.devices()[0], run.config.peak_tflops)[0] * 1e12 * jax.device_count()
    preemption = opened.enter_context(Preemption())
    log = StepLog(writer, batcher, flops_per_token, peak)
    hooks = _hooks(run, log, writer, eval_step)
    if preemption.reached(run.start):  # notified while starting: step `start` is already saved
        tell_every_host(f"preempted before step {run.start + 1} of {total}; rerun the same command to resume")
        return {"status": "preempted"}
    try:
        for step in range(run.start, total):
            host_batch = batcher.batch(step)
            run.state, metrics = train_step(run.state, sharding.global_batch(host_batch.arrays(), mesh))
            log.dispatched(step, metrics, host_batch.padding_fraction)  # logs the step before
            stopping = preemption.reached(step + 1) and step + 1 < total
            hooks(step + 1, stopping)
            if stopping:
                run.ckpts.wait()
                tell_every_host(f"preempted: saved step {step + 1} of {total}; rerun the same command to resume")
                return {**log.last, "status": "preempted"}
        log.flush()
    except Diverged as e:
        run.ckpts.wait()
        good = run.ckpts.latest_step()
        where = f"the last checkpoint is step {good} ({run.workdir / 'checkpoints' / str(good)})" if good else "no checkpoint was saved"
        raise LimaError(f"{e}; stopped without saving that state; {where}") from None
    return {**log.last, "status": "finished"}
