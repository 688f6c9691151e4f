"""What a user sees of a run, on process 0 only: a progress bar, `<workdir>/metrics.jsonl` (one JSON
object per step, one per epoch with the dev loss), TensorBoard event files (tensorboardX's format:
no TensorFlow needed) and, with `log.wandb` set, the same values in Weights & Biases (train/wandb_sink.py). In a `gs://` workdir metrics.jsonl is uploaded whole every few seconds and at
each checkpoint (an object cannot be appended to).

Both files are written in the run's own thread: a write that fails (a full disk) stops the run with one
line. tensorboardX's SummaryWriter writes from a thread of its own, which such an error kills, leaving
the run blocked forever on its queue."""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import sys
import time
from typing import Any, Iterator

from tqdm import tqdm

from lima_jax.data.records import repair_tail
from lima_jax.errors import RunFailure
from lima_jax.storage.paths import Appender, Path, write_atomically

METRICS_FILE = "metrics.jsonl"
DEV_FILE = "dev.jsonl"  # the dev conversations the run evaluated on, for checkpoint selection
TENSORBOARD_DIR = "tensorboard"
_UPLOAD_EVERY_S = 10.0  # how often, at most, a cloud metrics.jsonl is uploaded and the event file flushed, between checkpoints


class MetricsWriter:
    def __init__(self, workdir: Path, *, resume_step: int, total_steps: int, enabled: bool, sink: Any = None):
        self.enabled, self.sink = enabled, sink  # sink: a WandbSink, or None
        if not enabled:
            return
        self.path = workdir / METRICS_FILE
        self.events_dir = workdir / TENSORBOARD_DIR
        self._failed = False
        with self._writing(self.path):
            self._drop_records_after(resume_step)
            self.file = Appender(self.path, min_interval_s=_UPLOAD_EVERY_S)
        with self._writing(self.events_dir):
            self.events = EventFile(self.events_dir)
        self.bar = tqdm(total=total_steps, initial=resume_step, unit="step", dynamic_ncols=True)

    def _drop_records_after(self, resume_step: int) -> None:
        """A resumed run rewrites what the interrupted one logged past its last checkpoint, so the
        file ends as an uninterrupted run's would."""
        if not self.path.exists():
            return
        repair_tail(self.path)  # a line cut short by the interruption
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption
            if record.get("step", math.inf) <= resume_step:  # steps done, as the checkpoints are numbered
                kept.append(line)
        write_atomically(self.path, "".join(line + "\n" for line in kept))  # a kill now leaves the old file whole

    def step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._write(record)
        with self._writing(self.events_dir):
            for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu", "padding_fraction"):
                self.events.scalar(f"train/{key}", record[key], record["step"])
            self.events.flush()
        if self.sink is not None:
            self.sink.log({f"train/{k}": v for k, v in record.items() if k != "step"}, record["step"])
        self.bar.set_description(f"epoch {record['epoch']:.2f}")
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
        self.bar.update(1)

    def epoch(self, epoch: int, step: int, dev_loss: float | None) -> None:
        """The epoch's record; without a dev set its dev loss is null (JSON has no NaN)."""
        if not self.enabled:
            return
        perplexity = None if dev_loss is None else math.exp(min(dev_loss, 50.0))
        record = {"epoch": epoch, "step": step, "dev_loss": dev_loss, "dev_perplexity": perplexity}
        self._write(record)
        if dev_loss is not None:
            with self._writing(self.events_dir):
                self.events.scalar("dev/loss", dev_loss, step)
            if self.sink is not None:
                self.sink.log({"dev/loss": dev_loss, "dev/perplexity": perplexity}, step)
            self.bar.write(f"epoch {epoch}: dev loss {dev_loss:.4f} (perplexity {perplexity:.2f})")

    def sync(self) -> None:
        """Makes every record so far readable (a cloud file is uploaded now): called with each
        checkpoint, so a resume finds the records up to its step."""
        if self.enabled:
            with self._writing(self.path):
                self.file.flush(force=True)
            with self._writing(self.events_dir):
                self.events.flush(force=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        try:
            with self._writing(self.path):
                self.file.close()
        finally:
            try:
                with self._writing(self.events_dir):
                    self.events.close()
            finally:
                if self.sink is not None:
                    self.sink.close()

    def _write(self, record: dict[str, Any]) -> None:
        with self._writing(self.path):
            self.file.write(json.dumps(record, allow_nan=False) + "\n")
            self.file.flush()

    @contextlib.contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """An OSError writing `path` (a full disk, a lost bucket) as one line. After one, later errors
        are dropped: closing a file that could not be written raises the same error again, while the
        first is on its way to the user."""
        try:
            yield
        except OSError as e:
            if self._failed:
                return
            self._failed = True
            raise RunFailure(
                f"writing {path} failed: {e.strerror or e}; the checkpoints saved before it are kept: "
                "fix the cause and rerun the same command to resume"
            ) from e


class Diverged(Exception):
    """A step whose loss or gradient norm is not finite: its state must never be saved."""


class StepLog:
    """Each step's record, written once the next step is dispatched (fetching its metrics then waits
    for that step only, not the device queue); `flush` writes the last one now (before a save)."""

    def __init__(self, writer: MetricsWriter, batcher, flops_per_token: float, peak_flops: float) -> None:
        import jax  # here, not above: evaluate.epochs reads this module's file names without JAX

        self.fetch, self.hosts = jax.device_get, jax.process_count()
        self.writer, self.batcher = writer, batcher
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.pending = None  # (step, its metrics on the device, its padding fraction)
        self.last: dict = {}  # the last record written
        self.tick = time.perf_counter()

    def dispatched(self, step: int, metrics: dict, padding: float) -> None:
        if self.pending is not None:
            self.last = self._write(*self.pending)
            self.tick = time.perf_counter()
        self.pending = (step, metrics, padding)

    def flush(self, steps_done: int | None = None) -> None:
        if self.pending is not None:
            self.last = self._write(*self.pending)
            self.pending, self.tick = None, time.perf_counter()

    def _write(self, step: int, metrics: dict, padding: float) -> dict:
        values = {k: float(v) for k, v in self.fetch(metrics).items()}  # waits for that step only
        bad = [k for k in ("loss", "grad_norm") if not math.isfinite(values[k])]
        if bad:  # every host sees the same global values, so every host stops here
            raise Diverged(f"step {step + 1} of {self.batcher.total_steps}: {bad[0]} is {values[bad[0]]} (loss "
                           f"{values['loss']:.4g}, grad_norm {values['grad_norm']:.4g}, learning rate {values['learning_rate']:.3g})")
        seconds = max(time.perf_counter() - self.tick, 1e-9)
        batcher = self.batcher
        real_tokens = batcher.rows_per_host * self.hosts * batcher.seq_len * (1.0 - padding)
        record = {
            "step": step + 1,  # steps done: the checkpoints' numbering
            "epoch": round(batcher.epoch_progress(step + 1), 4),
            "loss": values["loss"],
            "learning_rate": values["learning_rate"],
            "grad_norm": values["grad_norm"],
            "target_tokens": int(values["target_tokens"]),
            "padding_fraction": round(padding, 4),
            "tokens_per_s": real_tokens / seconds,
            "mfu": real_tokens * self.flops_per_token / seconds / self.peak_flops,
        }
        self.writer.step(record)
        return record


def logged_loss(workdir: Path, step: int) -> float | None:
    """The loss metrics.jsonl holds for `step` (None if none): what a rerun of a finished run reports."""
    path = workdir / METRICS_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if record.get("step") == step and "loss" in record:
            return record["loss"]
    return None


class EventFile:
    """TensorBoard scalars appended to a new event file in `folder`, in the caller's thread (see the
    module's docstring); flushed every `_UPLOAD_EVERY_S` (a cloud file is uploaded whole each time)."""

    def __init__(self, folder: Path):
        _without_torch()
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.record_writer import directory_check

        self._Event, self._Summary = Event, Summary
        directory_check(str(folder))  # a local folder is made; a bucket needs none
        self._writer = EventsWriter(str(folder / "events"))
        self._flushed_at = time.monotonic()

    def scalar(self, tag: str, value: float, step: int) -> None:
        summary = self._Summary(value=[self._Summary.Value(tag=tag, simple_value=value)])
        self._writer.write_event(self._Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self, force: bool = False) -> None:
        if force or time.monotonic() - self._flushed_at >= _UPLOAD_EVERY_S:
            self._writer.flush()
            self._flushed_at = time.monotonic()

    def close(self) -> None:
        self._writer.close()


def _without_torch() -> None:
    """Imports tensorboardX without PyTorch: tensorboardX imports torch wherever it is installed (1-2 s
    and hundreds of MB at every start) only to accept torch tensors, which a JAX run never logs. A
    `None` in sys.modules makes its `import torch` fail as if torch were absent."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        importlib.import_module("tensorboardX")
    finally:
        del sys.modules["torch"]
