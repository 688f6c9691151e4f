"""Weights & Biases logging beside metrics.jsonl and TensorBoard (`--config.log.wandb=PROJECT`), on
process 0 only: every step's record as `train/<key>` and each epoch's dev loss as `dev/loss` at the
training step, with the run's resolved config as the W&B config.

The W&B run's id is kept in `<workdir>/wandb_run_id`, so that rerunning the same command resumes the
same W&B run and its curves continue at the step the run resumes from. W&B is a view of the run, never
a reason to lose it: a W&B error (a bad project, the network) is one warning line, and the training goes
on without it. `wandb` is imported here only, when the key is set (an optional dependency, checked
before compiling by `lima_jax.config.validate`)."""
from __future__ import annotations

import secrets
import string
from typing import Any

import ml_collections

from lima_jax.log import say
from lima_jax.storage.paths import Path, write_atomically

RUN_ID_FILE = "wandb_run_id"


class WandbSink:
    """One W&B run for a training run, or nothing once an error occurred (after its warning line)."""

    def __init__(self, config: ml_collections.ConfigDict, resolved: dict, workdir: Path):
        self.run = None
        try:
            import wandb

            id_file = workdir / RUN_ID_FILE
            run_id = id_file.read_text(encoding="utf-8").strip() if id_file.exists() else _new_id()
            log = config.log
            self.run = wandb.init(project=log.wandb, entity=log.wandb_entity or None, name=log.wandb_name or None,
                                  id=run_id, resume="allow", config=resolved)
            if not id_file.exists():
                write_atomically(id_file, run_id + "\n")
        except Exception as e:  # noqa: BLE001: wandb raises many kinds; none may stop the run
            self._failed("starting", e)

    def log(self, values: dict[str, Any], step: int) -> None:
        if self.run is not None:
            try:
                self.run.log(values, step=step)
            except Exception as e:  # noqa: BLE001
                self._failed("logging to", e)

    def close(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as e:  # noqa: BLE001
                self._failed("closing", e)
            self.run = None

    def _failed(self, doing: str, e: Exception) -> None:
        say(f"warning: {doing} Weights & Biases failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "training goes on without it (metrics.jsonl and TensorBoard are still written)")
        self.run = None


def _new_id() -> str:
    """A W&B run id as W&B makes them: 8 lowercase letters and digits."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
