"""The LIMA supervised fine-tuning run (`python -m lima_jax.train`; see `train/__main__.py`).

`train(config)` reads top to bottom: check the config and the data (all before compiling), build the mesh and the
state (fresh, from a pretrained checkpoint, or resumed from the workdir's latest step), then loop.
A run restarted with the same workdir continues exactly where it stopped; SIGTERM (a preemption)
saves and exits cleanly.
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lima_jax import flops, sharding
from lima_jax.errors import LimaError, say
from lima_jax.config import prepare
from lima_jax.data import pipeline
from lima_jax.lora import spec as lora_spec
from lima_jax.lora.spec import LoraSpec
from lima_jax.model import ModelConfig
from lima_jax.storage.paths import check_writable, user_path
from lima_jax.train import optimizer as optim
from lima_jax.train.checkpoints import RunCheckpoints
from lima_jax.train.run_dir import WorkdirLock, check_same_run, write_dev_set, write_run_files
from lima_jax.train.init_weights import check_same_base, describe_lora, load_frozen_base, load_pretrained
from lima_jax.train.metrics import MetricsWriter, logged_loss
from lima_jax.train.state import (abstract_state, init_adapters, init_state, jit_eval_step, jit_train_step, shardings_of,
                                  state_from_params, trained_dtype)
from lima_jax.train.step import TrainState
from lima_jax.weights import checkpoint
from lima_jax.weights.vocab import tokenizer_for, trained_model_config


def check_batch_fits_mesh(config: ml_collections.ConfigDict, mesh, process_count: int | None = None) -> int:
    """Rows per host must split evenly over the data axes and the micro-batches: returns the row
    multiple each host rounds its packed rows up to."""
    dp = sharding.data_parallel_size(mesh)
    if config.batch_size % dp:
        raise LimaError(f"config key batch_size: {config.batch_size} does not divide over the data axes (data*fsdp = {dp})")
    per_step = dp * config.grad_accum
    return per_step // math.gcd(per_step, jax.process_count() if process_count is None else process_count)


class Preemption:
    """SIGTERM (a TPU preemption, a SLURM time limit) asks the loop to save and stop; `reached(steps_done)`
    answers alike on every host, without touching the device.

    One process: our own handler sets a flag, and a second SIGTERM ends the process at once. Several:
    JAX's coordination service owns SIGTERM (its preemption notifier installs a handler at
    `jax.distributed.initialize`; ours would replace it) and, once any host is notified, agrees over RPC
    on the first step every host can still reach. Exiting the `with` block puts the previous handler back.
    """

    def __init__(self) -> None:
        self.requested = False
        self._reported = 0  # the last step number told to JAX's sync protocol
        self._installed = jax.process_count() == 1
        self._synced = not self._installed and jax.config.jax_enable_preemption_service
        if self._installed:  # Ctrl-C saves too; a second one stops at once
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        elif not self._synced:
            say("jax_enable_preemption_service is off: SIGTERM stops this run without saving")

    def __enter__(self) -> "Preemption":
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:  # a handler set outside Python (getsignal's None) cannot be put back: the default
            for sig, previous in self._previous.items():
                signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the save
        # A second SIGTERM ends the process at once, even a run stuck where no Python handler runs
        # (native code, a hung write): a scheduler's retry must never meet a run that cannot stop.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        say(f"{name} received: saving a checkpoint and stopping after this step ({again} again stops at once)")
        self.requested = True

    def reached(self, steps_done: int) -> bool:
        """Whether to save and stop after `steps_done` steps; a resumed run asks first with its start."""
        if not self._synced:
            return self.requested
        from jax.experimental import multihost_utils

        # The sync point is one past the furthest host's last reported step number, so every number is
        # reported, in order, from 1: a notice during start-up may land on one a resumed run never runs.
        hit = False
        for number in range(self._reported + 1, steps_done + 1):
            hit = multihost_utils.reached_preemption_sync_point(number) or hit
        self._reported = max(self._reported, steps_done)
        return hit


def evaluate(eval_step, params, batches, mesh) -> float:
    """Mean dev loss per target token over the whole dev set."""
    loss_sum = count = 0.0
    for batch in batches:
        out = eval_step(params, _global_batch(batch.arrays(), mesh))
        loss_sum += float(out["loss_sum"])
        count += float(out["count"])
    return loss_sum / max(count, 1.0)


def _global_batch(arrays: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """This host's rows -> one global array per field, sharded over the data axes."""
    target = sharding.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(target, v) for k, v in arrays.items()}


def fresh_optimizer_state(params: Any, optimizer: optax.GradientTransformation, cfg: ModelConfig, mesh, step: int,
                          lora: LoraSpec | None = None) -> Any:
    """A new optimizer state for `params` whose learning-rate schedule stands at `step`: a resume from a
    step without one (its moments start over, as at step 0; the schedule must not)."""
    opt_state = state_from_params(params, optimizer, cfg, mesh, lora).opt_state
    is_schedule = lambda s: isinstance(s, optax.ScaleByScheduleState)  # noqa: E731
    at_step = lambda s: s._replace(count=jax.device_put(jnp.asarray(step, s.count.dtype), s.count.sharding))  # noqa: E731
    return jax.tree.map(lambda s: at_step(s) if is_schedule(s) else s, opt_state, is_leaf=is_schedule)


def _with_frozen(step, frozen):
    """A LoRA run's jitted step with its frozen base bound as the last argument."""
    return lambda *args: step(*args, frozen)


class Diverged(Exception):
    """A step whose loss or gradient norm is not finite: its state must never be saved."""


def train(config: ml_collections.ConfigDict) -> dict:
    """Runs (or resumes) the fine-tuning; returns the last step's metrics with `status`: `finished`
    or `preempted`. What it opens (the checkpoint manager, the metrics files, the signal handlers)
    is closed however it ends."""
    with contextlib.ExitStack() as opened:
        return _train(config, opened)


def _train(config: ml_collections.ConfigDict, opened: contextlib.ExitStack) -> dict:
    prepare(config, jax.default_backend())
    lora = lora_spec.from_config(config)
    workdir = user_path(config.workdir)
    if jax.process_index() == 0:  # a missing bucket or a denied write: one line now, not at the first checkpoint
        check_writable(workdir, "config key workdir:")
    opened.enter_context(WorkdirLock(workdir))  # before anything is written there
    resolved = check_same_run(config, workdir)  # before the data is prepared under the workdir
    mesh = sharding.make_mesh(config.mesh.to_dict())
    row_multiple = check_batch_fits_mesh(config, mesh)
    data = pipeline.build(
        config,
        tokenizer_path=tokenizer_for(config),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        row_multiple=row_multiple,
        eval_rows=max(row_multiple, sharding.data_parallel_size(mesh) // jax.process_count() or 1),
    )
    cfg = trained_model_config(config, data.tokenizer.num_pieces)
    batcher = data.batcher
    total = batcher.total_steps
    say(
        f"{data.num_train} training conversations from {data.source} and {data.num_dev} dev conversations "
        f"{data.dev_source} "
        f"({data.skipped} invalid skipped); {total} steps of {config.batch_size} examples in "
        f"{batcher.rows_per_host} rows x {config.data.max_len} tokens per host; mesh {dict(mesh.shape)}"
    )
    if config.init_checkpoint:
        checkpoint.resolve(config.init_checkpoint)  # a wrong path fails here, before compiling
    write_run_files(resolved, data.fingerprint, workdir)
    write_dev_set(data.dev_records, workdir)

    optimizer = optim.make_optimizer(config.optim, total, trained_dtype(cfg, lora))
    schedule = optim.learning_rate(config.optim, total)
    ckpts = RunCheckpoints(workdir, max_to_keep=config.checkpoint.max_to_keep, async_save=config.checkpoint.async_save,
                           params_dtype=config.checkpoint.params_dtype)
    opened.callback(ckpts.close)  # waits for a save in flight
    frozen = lora_record = None
    if lora is not None:  # the base first: which rows the adapters train depends on it
        lora, frozen, lora_record = load_frozen_base(config, cfg, mesh, lora)
    abstract = abstract_state(cfg, optimizer, mesh, lora)
    resumed = ckpts.restore_latest(abstract.params, abstract.opt_state)
    start = resumed[0] if resumed else 0
    if resumed:
        params, opt_state = resumed[1:]
        if lora is not None:
            check_same_base(ckpts.directory / str(start), lora_record)
        if opt_state is None:
            opt_state = fresh_optimizer_state(params, optimizer, cfg, mesh, start, lora)
            say(f"warning: checkpoint step {start} holds no optimizer state (only the latest step keeps one): resuming "
                f"from its parameters with fresh AdamW moments, the learning-rate schedule at step {start}; the run "
                "will not match an uninterrupted one exactly")
        state = TrainState(jnp.asarray(start, jnp.int32), params, opt_state)
        say(f"resumed {workdir} at step {start} of {total}")
    elif lora is not None:
        state = state_from_params(init_adapters(cfg, lora, mesh, config.seed, frozen), optimizer, cfg, mesh, lora)
    elif config.init_checkpoint:
        state = state_from_params(load_pretrained(config, cfg, mesh)[0], optimizer, cfg, mesh)
    else:
        state = init_state(cfg, optimizer, mesh, config.seed)
    if start >= total:  # before anything is compiled or written: the rerun reports the run it finds
        say(f"{workdir} has finished: step {total} of {total} is saved; nothing to do")
        return {"status": "finished", "step": start, "loss": logged_loss(workdir, start)}
    if jax.process_index() == 0:
        data.tokenizer.save(workdir)

    if lora is not None:
        say(describe_lora(lora, state.params, frozen))
    frozen_shardings = None if frozen is None else shardings_of(frozen)
    train_step = jit_train_step(config, cfg, optimizer, schedule, mesh, lora, frozen_shardings)
    eval_step = jit_eval_step(cfg, mesh, lora, frozen_shardings)
    if frozen is not None:  # a LoRA run's steps take the frozen base too
        train_step, eval_step = _with_frozen(train_step, frozen), _with_frozen(eval_step, frozen)
    flops_per_token = flops.train_flops_per_token(cfg, config.data.max_len, frozen=lora is not None)
    peak = flops.peak_tflops(jax.devices()[0], config.peak_tflops)[0] * 1e12 * jax.device_count()
    epoch_ends = {steps: i + 1 for i, steps in enumerate(batcher.epoch_end_steps())}  # steps done -> epoch
    writer = MetricsWriter(workdir, resume_step=start, total_steps=total, enabled=jax.process_index() == 0)
    opened.callback(writer.close)
    run_meta = {"config": config.name, "eot_id": data.tokenizer.eot_id, "chat_format": data.tokenizer.chat_format,
                "total_steps": total, "max_len": config.data.max_len}
    preemption = opened.enter_context(Preemption())

    def save(steps_done: int) -> None:
        writer.sync()  # the records up to here first: a resume from this step keeps them
        run = dict(run_meta, epoch=batcher.epoch_progress(steps_done))
        ckpts.save(steps_done, state.params, state.opt_state, cfg, run, lora=lora_record)

    def log(pending, tick: float) -> dict:
        return _log(writer, pending, batcher, tick, flops_per_token, peak)

    last: dict = {}
    pending = None  # the previous step's metrics: fetched after the next step is dispatched
    tick = time.perf_counter()
    if preemption.reached(start):  # notified while starting: step `start` is already saved
        _tell_every_host(f"preempted before step {start + 1} of {total}; rerun the same command to resume")
        return {"status": "preempted"}
    try:
        for step in range(start, total):
            host_batch = batcher.batch(step)
            state, metrics = train_step(state, _global_batch(host_batch.arrays(), mesh))
            if pending is not None:
                last = log(pending, tick)
                tick = time.perf_counter()
            pending = (step, metrics, host_batch.padding_fraction)
            steps_done = step + 1
            stopping = preemption.reached(steps_done) and steps_done < total
            if steps_done in epoch_ends or stopping or (
                    config.checkpoint.every_steps and steps_done % config.checkpoint.every_steps == 0):
                # A step is logged (and found finite) before its state is saved: after any kill,
                # metrics.jsonl holds every saved step, and no non-finite state is ever saved.
                last = log(pending, tick)
                pending, tick = None, time.perf_counter()
                if steps_done in epoch_ends:
                    dev_loss = evaluate(eval_step, state.params, data.dev_batches, mesh) if data.dev_batches else None
                    writer.epoch(epoch_ends[steps_done], steps_done, dev_loss)
                save(steps_done)
            if stopping:
                ckpts.wait()
                _tell_every_host(f"preempted: saved step {steps_done} of {total}; rerun the same command to resume")
                return {**last, "status": "preempted"}
        if pending is not None:
            last = log(pending, tick)
    except Diverged as e:
        ckpts.wait()
        good = ckpts.latest_step()
        where = f"the last checkpoint is step {good} ({workdir / 'checkpoints' / str(good)})" if good else "no checkpoint was saved"
        raise LimaError(f"{e}; stopped without saving that state; {where}") from None
    return {**last, "status": "finished"}


def _tell_every_host(message: str) -> None:
    """Why this host stopped: each host's log says so (not only process 0's)."""
    prefix = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
    print(prefix + message, file=sys.stderr, flush=True)


def _log(writer: MetricsWriter, pending, batcher, tick: float, flops_per_token: float, peak: float) -> dict:
    step, metrics, padding = pending
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}  # waits for that step only
    bad = [k for k in ("loss", "grad_norm") if not math.isfinite(values[k])]
    if bad:  # every host sees the same global values, so every host stops here
        raise Diverged(f"step {step + 1} of {batcher.total_steps}: {bad[0]} is {values[bad[0]]} "
                       f"(loss {values['loss']:.4g}, grad_norm {values['grad_norm']:.4g}, learning rate {values['learning_rate']:.3g})")
    seconds = max(time.perf_counter() - tick, 1e-9)
    real_tokens = batcher.rows_per_host * jax.process_count() * batcher.seq_len * (1.0 - padding)
    record = {
        "step": step + 1,  # steps done: the checkpoints' numbering
        "epoch": round(batcher.epoch_progress(step + 1), 4),
        "loss": values["loss"],
        "learning_rate": values["learning_rate"],
        "grad_norm": values["grad_norm"],
        "target_tokens": int(values["target_tokens"]),
        "padding_fraction": round(padding, 4),
        "tokens_per_s": real_tokens / seconds,
        "mfu": real_tokens * flops_per_token / seconds / peak,
    }
    writer.step(record)
    return record
