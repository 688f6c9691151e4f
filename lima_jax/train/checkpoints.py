"""A training run's checkpoints: `<workdir>/checkpoints/<step>/`, each a model checkpoint
(`weights.checkpoint`'s layout, so every weight reader takes a step) plus the optimizer state and what
the run records with it."""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from lima_jax.model import ModelConfig
from lima_jax.storage.paths import user_path
from lima_jax.weights.checkpoint import STEPS_DIR, model_record


class RunCheckpoints:
    """The checkpoints of a training run: `<workdir>/checkpoints/<step>/` with the items `params`,
    `opt_state`, `model` (the architecture) and `run` (epoch, config name: what a reader needs).

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
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, cfg: ModelConfig, run: dict[str, Any]) -> None:
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            model=ocp.args.JsonSave(model_record(cfg)),
            run=ocp.args.JsonSave(run),
        )
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, dict[str, Any]]:
        """Restores onto whatever shardings the abstract trees carry (any mesh, any device count)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params),
                opt_state=ocp.args.StandardRestore(abstract_opt_state),
                run=ocp.args.JsonRestore(),
            ),
        )
        return restored["params"], restored["opt_state"], restored["run"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
