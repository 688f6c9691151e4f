"""A training run's checkpoints: `<workdir>/checkpoints/<step>/`, each a model checkpoint
(`weights.checkpoint`'s layout, so every weight reader takes a step) plus the optimizer state and what
the run records with it, with the checksums of both trees."""
from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp

from lima_jax.cli import say
from lima_jax.errors import RunFailure
from lima_jax.model import ModelConfig
from lima_jax.storage.paths import user_path
from lima_jax.weights import checksums
from lima_jax.weights.checkpoint import STEPS_DIR, model_record, root_cause, saved_checksums


ITEMS = ("params", "opt_state", "model", "run")  # what each step must hold (`checksums` too, unless saved before them)


class RunCheckpoints:
    """The checkpoints of a training run: `<workdir>/checkpoints/<step>/` with the items `params`,
    `opt_state`, `model` (the architecture), `run` (epoch, config name: what a reader needs) and
    `checksums` (of every array, checked on restore).

    Saves are asynchronous; a step becomes visible only once complete, so a resume never picks a
    half-written one. `max_to_keep=0` keeps every step.
    """

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 0, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep or None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.directory = user_path(workdir) / STEPS_DIR
        self._latest_save: int | None = None
        self._failed = False
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, cfg: ModelConfig, run: dict[str, Any]) -> None:
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            model=ocp.args.JsonSave(model_record(cfg)),
            run=ocp.args.JsonSave(run),
            checksums=ocp.args.JsonSave({"params": checksums.of(params), "opt_state": checksums.of(opt_state)}),
        )
        with self._saving(self._latest_save):  # the save in flight fails here, under its own step
            self.manager.wait_until_finished()
        with self._saving(step):
            self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, dict[str, Any]]:
        """Restores onto whatever shardings the abstract trees carry (any mesh, any device count); an
        array that does not match its checksum is a LimaError naming it."""
        record = saved_checksums(self.directory / str(step)) or {}
        targets = {"params": abstract_params, "opt_state": abstract_opt_state}
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{item: ocp.args.StandardRestore(checksums.read_as(target, record.get(item))) for item, target in targets.items()},
                run=ocp.args.JsonRestore(),
            ),
        )
        params, opt_state = (checksums.checked(restored[item], target, record.get(item), item) for item, target in targets.items())
        return params, opt_state, restored["run"]

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any) -> tuple[int, Any, Any] | None:
        """(step, params, opt_state) of the newest step that reads back whole, or None if there is none.
        A step that does not (a stray empty folder, a truncated tensor file) is moved aside, kept for
        the user to inspect, with a warning naming it: it would otherwise be "latest" again next time."""
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
        with self._saving(self._latest_save):
            self.manager.wait_until_finished()

    def close(self) -> None:
        if self._failed:  # the failure is already on its way to the user; closing would raise it again
            return
        with self._saving(self._latest_save):
            self.manager.close()

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
            why = root_cause(e)
            os_reason = re.search(r": ([^:]+?) \[os_error_code='?\d+'?\]", why)
            raise RunFailure(
                f"saving checkpoint step {step} in {self.directory} failed: "
                f"{os_reason.group(1) if os_reason else why[:300]}; {self._last_complete()}"
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
