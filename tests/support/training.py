"""Small training runs: the tiny model on a slice of the embedded demo, in seconds, and what tests read
back from a workdir."""
from __future__ import annotations

import json
import os
import subprocess
import time

from support.commands import command_line

from lima_jax.config import load_config
from lima_jax.data import demo_dir

SMALL = {  # the tiny model on a slice of the demo: seconds per run
    "num_epochs": 1,
    "batch_size": 8,
    "data.max_len": 64,
    "data.dev_size": 8,
    "checkpoint.async_save": False,
    # A stated peak for the MFU: every training process otherwise measures this CPU's fp32 matmuls (about 2
    # CPU s) for a figure no test of a SMALL run reads (the README run and the bench still measure it).
    "peak_tflops": 0.1,
}


def small_config(tmp_path, **overrides):
    return load_config("tiny", {**SMALL, "workdir": str(tmp_path / "run"), **overrides})


def train_args(workdir, *extra: str) -> list[str]:
    """`lima_jax.train`'s flags for a SMALL run in `workdir` (later flags win)."""
    return ["--config=tiny", f"--config.workdir={workdir}", *(f"--config.{k}={v}" for k, v in SMALL.items()), *extra]


def read_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def demo_records() -> list[dict]:
    from lima_jax.data.records import read_conversations

    return read_conversations(demo_dir() / "train.jsonl")[0]


def data_dir(folder, records, dev=None):
    """A data folder holding `records` (and `dev`) in LIMA's format."""
    folder.mkdir(parents=True, exist_ok=True)
    line = lambda r: json.dumps({"conversations": r["conversations"]}) + "\n"  # noqa: E731
    (folder / "train.jsonl").write_text("".join(line(r) for r in records))
    if dev is not None:
        (folder / "dev.jsonl").write_text("".join(line(r) for r in dev))
    return folder


def on_data(tmp_path, folder, **overrides):
    """A SMALL config training on `folder` with the demo tokenizer."""
    return small_config(tmp_path, **{"data.manual_dir": str(folder), "data.tokenizer": str(demo_dir() / "tokenizer.model"),
                                     **overrides})


def checkpoint_steps(workdir) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p) for p in os.listdir(folder) if p.isdigit()) if folder.exists() else []


def kill_9_after(args: list[str], workdir, steps: int, delay: float = 0.0) -> int:
    """Runs `lima_jax.train ARGS` and kills it (-9) `delay` seconds after `steps` checkpoints are
    complete; returns its pid."""
    proc = subprocess.Popen(command_line("train", *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(checkpoint_steps(workdir)) < steps and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(delay)
    proc.kill()
    proc.wait()
    return proc.pid


def two_step_config(tmp_path, **overrides):
    """The tiny model on 24 demo conversations (16 trained, 8 dev): two steps of 8."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    lines = (demo_dir() / "train.jsonl").read_text().splitlines()[:24]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    base = {"workdir": str(tmp_path / "run"), "num_epochs": 1, "batch_size": 8, "data.max_len": 64, "data.dev_size": 8,
            "checkpoint.async_save": False, "data.manual_dir": str(data)}
    return load_config("tiny", {**base, **overrides})
