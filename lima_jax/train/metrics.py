"""What a user sees of a run, on process 0 only: a progress bar, `<workdir>/metrics.jsonl` (one JSON
object per step, one per epoch with the dev loss) and TensorBoard event files (tensorboardX: no
TensorFlow needed). In a `gs://` workdir metrics.jsonl is uploaded whole every few seconds and at
each checkpoint (an object cannot be appended to)."""
from __future__ import annotations

import json
import math
import sys
from typing import Any

from tqdm import tqdm

from lima_jax.data.records import repair_tail
from lima_jax.storage.paths import Appender, Path, write_atomically

METRICS_FILE = "metrics.jsonl"
DEV_FILE = "dev.jsonl"  # the dev conversations the run evaluated on, for checkpoint selection
_UPLOAD_EVERY_S = 10.0  # a cloud metrics.jsonl: how often it is uploaded again, at most, between checkpoints


class MetricsWriter:
    def __init__(self, workdir: Path, *, resume_step: int, total_steps: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        self.path = workdir / METRICS_FILE
        self._drop_records_after(resume_step)
        self.file = Appender(self.path, min_interval_s=_UPLOAD_EVERY_S)
        self.tb = _summary_writer()(str(workdir / "tensorboard"))
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
            if ("dev_loss" in record and record["step"] <= resume_step) or record.get("step", math.inf) < resume_step:
                kept.append(line)
        write_atomically(self.path, "".join(line + "\n" for line in kept))  # a kill now leaves the old file whole

    def step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record, allow_nan=False) + "\n")
        self.file.flush()
        for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu", "padding_fraction"):
            self.tb.add_scalar(f"train/{key}", record[key], record["step"])
        self.bar.set_description(f"epoch {record['epoch']:.2f}")
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
        self.bar.update(1)

    def epoch(self, epoch: int, step: int, dev_loss: float | None) -> None:
        """The epoch's record; without a dev set its dev loss is null (JSON has no NaN)."""
        if not self.enabled:
            return
        perplexity = None if dev_loss is None else math.exp(min(dev_loss, 50.0))
        record = {"epoch": epoch, "step": step, "dev_loss": dev_loss, "dev_perplexity": perplexity}
        self.file.write(json.dumps(record, allow_nan=False) + "\n")
        self.file.flush()
        if dev_loss is not None:
            self.tb.add_scalar("dev/loss", dev_loss, step)
            self.bar.write(f"epoch {epoch}: dev loss {dev_loss:.4f} (perplexity {perplexity:.2f})")

    def sync(self) -> None:
        """Makes every record so far readable (a cloud file is uploaded now): called with each
        checkpoint, so a resume finds the records up to its step."""
        if self.enabled:
            self.file.flush(force=True)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.file.close()
            self.tb.close()


def _summary_writer() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch wherever it
    is installed (1-2 s and hundreds of MB at every start) only to accept torch tensors, which a JAX
    run never logs. A `None` in sys.modules makes its `import torch` fail as if torch were absent."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter
