"""A training run's checkpoints: `<workdir>/checkpoints/<step>/`, each a model checkpoint
(`weights.checkpoint`'s layout, so every weight reader takes a step) plus what the run records with it,
with the checksums of what it holds. Only the latest step also keeps the optimizer state (AdamW's two
moments: twice the parameters again): a resume alone reads it, and from the latest step."""
from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp

from lima_jax.errors import RunFailure
from lima_jax.log import say
from lima_jax.model import ModelConfig
from lima_jax.storage.paths import Path, user_path
from lima_jax.weights import checksums
from lima_jax.weights.checkpoint import LORA, STEPS_DIR, model_record, root_cause, saved_checksums


ITEMS = ("params", "model", "run")  # what each step must hold (`checksums` too, unless saved before them)
OPT_STATE = "opt_state"  # the latest step's only
TRAIN_PARAMS = "train_params"  # the latest step's only, where `params` is stored narrower (`params_dtype`)
# Orbax's tree metadata: an item cannot be read without it, so dropping an item deletes it first, and an
# item without it is absent. A kill while an item is dropped leaves no half-deleted item to be read.
PRESENCE = "_METADATA"


def has_item(step: Path, item: str) -> bool:
    return (step / item / PRESENCE).exists()


class RunCheckpoints:
    """The checkpoints of a training run: `<workdir>/checkpoints/<step>/` with the items `params`,
    `model` (the architecture), `run` (epoch, config name: what a reader needs), `checksums` (of every
    array, checked on restore) and, in the latest complete step only, `opt_state` (and `train_params`, the
    parameters as trained, where `params_dtype` stores `params` narrower: bf16 halves fp32 steps).

    Saves are asynchronous; a step becomes visible only once complete, so a resume never picks a
    half-written one. The steps before it lose their optimizer state only once it is complete (at the
    next save, `wait` or `close`), so a kill at any point leaves a step to resume from exactly.
    `max_to_keep=0` keeps every step.
    """

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 0, async_save: bool = True, params_dtype: str = ""):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep or None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.directory = user_path(workdir) / STEPS_DIR
        self._latest_save: int | None = None
        self._failed = False
        self._params_dtype = params_dtype
        self._lean_below = 0  # the steps below it hold no optimizer state (the drop checks each step once)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, cfg: ModelConfig, run: dict[str, Any],
             lora: dict[str, Any] | None = None) -> None:
        """`params` are the trained ones: a LoRA run's adapters, with `lora` (their record: spec, base) saved beside."""
        trees = {"params": params, OPT_STATE: opt_state}
        if self._params_dtype:
            stored = jax.tree.map(lambda a: a.astype(self._params_dtype), params)
            if any(a.dtype != b.dtype for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(params))):
                trees = {"params": stored, TRAIN_PARAMS: params, OPT_STATE: opt_state}
        args = ocp.args.Composite(
            **{item: ocp.args.StandardSave(tree) for item, tree in trees.items()},
            model=ocp.args.JsonSave(model_record(cfg)),
            run=ocp.args.JsonSave(run),
            **({} if lora is None else {LORA: ocp.args.JsonSave(lora)}),
            checksums=ocp.args.JsonSave({item: checksums.of(tree) for item, tree in trees.items()}),
        )
        self.wait()  # the save in flight fails here, under its own step
        with self._saving(step):
            self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, dict[str, Any]]:
        """(params, opt_state, run) restored onto whatever shardings the abstract trees carry (any mesh,
        any device count); opt_state is None where the step holds none, or `abstract_opt_state` is None.
        An array that does not match its checksum is a LimaError naming it."""
        folder = self.directory / str(step)
        record = saved_checksums(folder) or {}
        targets = {"params": abstract_params}
        if abstract_opt_state is not None and has_item(folder, OPT_STATE):
            exact = TRAIN_PARAMS if TRAIN_PARAMS in record else "params"  # the parameters as trained
            targets = {exact: abstract_params, OPT_STATE: abstract_opt_state}
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{item: ocp.args.StandardRestore(checksums.read_as(target, record.get(item))) for item, target in targets.items()},
                run=ocp.args.JsonRestore(),
            ),
        )
        trees = {item: checksums.checked(restored[item], target, record.get(item), item) for item, target in targets.items()}
        return trees.get(TRAIN_PARAMS, trees.get("params")), trees.get(OPT_STATE), restored["run"]

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any) -> tuple[int, Any, Any] | None:
        """(step, params, opt_state) of the newest step that reads back whole, or None if there is none;
        opt_state is None if that step holds none (the latest was set aside: the step before is read).
        A step that does not read back (a stray empty folder, a truncated tensor file) is moved aside,
        kept for the user to inspect, with a warning naming it: it would otherwise be "latest" again next time."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            folder = self.directory / str(step)
            missing = [item for item in ITEMS if not (folder / item).is_dir()]
            problem = f"no {', '.join(missing)}" if missing else None
            if problem is None:
                try:
                    params, opt_state, _ = self.restore(step, abstract_params, abstract_opt_state)
                    return step, params, opt_state
                except Exception as e:  # noqa: BLE001 - Orbax wraps TensorStore's errors in a bare Exception
                    if "RESOURCE_EXHAUSTED" in str(e):  # out of memory: the step may be fine
                        raise
                    problem = root_cause(e)
            self._set_aside(step, folder, problem)
        return None

    def _set_aside(self, step: int, folder, problem: str) -> None:
        aside = folder.with_name(f"{step}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
        say(f"warning: checkpoint step {step} cannot be read ({problem[:200]}); moved {folder} to {aside.name} "
            "and trying the step before")
        if jax.process_index() == 0:
            folder.rename(aside)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"lima_jax: step {step} set aside")
        self.manager.reload()

    def wait(self) -> None:
        """Waits for the save in flight; then every step before the latest drops its optimizer state."""
        with self._saving(self._latest_save):
            self.manager.wait_until_finished()
        self._drop_optimizer_states()

    def close(self) -> None:
        if self._failed:  # the failure is already on its way to the user; closing would raise it again
            return
        self.wait()
        with self._saving(self._latest_save):
            self.manager.close()

    def _drop_optimizer_states(self) -> None:
        """Deletes the optimizer state (then `train_params`) of every complete step before the latest
        complete one (called with no save in flight): a resume reads the latest; selection, sampling and
        serving read `params` only."""
        latest = self.manager.latest_step()
        if latest is None or jax.process_index() != 0:
            return
        for step in (s for s in self.manager.all_steps() if self._lean_below <= s < latest):
            for item in (self.directory / str(step) / name for name in (OPT_STATE, TRAIN_PARAMS)):
                try:
                    if item.exists():
                        (item / PRESENCE).unlink(missing_ok=True)  # first: from here on the item is absent
                        item.rmtree()
                except OSError as e:
                    say(f"warning: could not delete {item} ({e}); it takes disk space but does no harm")
        self._lean_below = latest

    @contextlib.contextmanager
    def _saving(self, step: int | None) -> Iterator[None]:
        """A failed save of `step` as one line, with the step a rerun resumes from. A save runs in the
        background: its failure surfaces at the next save (which first waits for it), wait or close."""
        if step is not None:
            self._latest_save = step
        try:
            yield
        except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many types
            self._failed = True
            raise RunFailure(
                f"saving checkpoint step {step} in {self.directory} failed: {_save_failure(e)}; {self._last_complete()}"
            ) from e

    def _last_complete(self) -> str:
        """Which step a rerun resumes from: the newest one whose save completed (it is read back whole
        or set aside then), found on disk."""
        try:
            steps = [int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and ocp.step.is_checkpoint_finalized(p)]
        except OSError as e:
            return f"the saved steps cannot be listed ({e}): fix the cause and rerun the same command to resume"
        if not steps:
            return "no step is complete: fix the cause and rerun the same command to start over"
        return f"the last complete step is {max(steps)}: fix the cause and rerun the same command to resume from it"


def _save_failure(error: BaseException) -> str:
    """Why a save failed, as the OS says it ("No space left on device") whether TensorStore wrote the
    file (its message ends "[os_error_code=28]") or Python did (an OSError, "[Errno 28] ...")."""
    cause = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    why = root_cause(error)
    os_reason = re.search(r": ([^:]+?) \[os_error_code='?\d+'?\]", why)
    return os_reason.group(1) if os_reason else why[:300]
