"""Faults a real run meets (divergence, kills, Ctrl-C, odd inputs): nothing lost, nothing silently wrong."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_train import SMALL, read_metrics, small_config

from lima_jax.errors import LimaError
from lima_jax.train.loop import train
from lima_jax.weights import checkpoint


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "lima_jax.train", "--config=tiny", f"--config.workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in SMALL.items()), *extra]


def test_a_diverging_run_stops_at_the_first_non_finite_step_and_never_saves_it(tmp_path):
    """lr 1e6: step 3's gradient norm is NaN. The run used to train on to the end, exit 0, save NaN
    checkpoints and write NaN into metrics.jsonl."""
    config = small_config(tmp_path, **{"optim.lr": 1e6, "optim.end_lr": 1e6, "checkpoint.every_steps": 2})
    with pytest.raises(LimaError) as e:
        train(config)
    message = str(e.value)
    assert message.startswith("step 3 of 100: grad_norm is nan"), message
    assert message.endswith(f"stopped without saving that state; the last checkpoint is step 2 ({tmp_path / 'run' / 'checkpoints' / '2'})")
    steps = sorted(int(p) for p in os.listdir(tmp_path / "run" / "checkpoints") if p.isdigit())
    assert steps == [2]
    _, params = checkpoint.load_params(tmp_path / "run")
    assert all(np.isfinite(np.asarray(a)).all() for a in __import__("jax").tree.leaves(params))
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text and [r["step"] for r in map(json.loads, text.splitlines())] == [0, 1]


def test_a_run_without_a_dev_set_writes_strict_json(tmp_path):
    train(small_config(tmp_path, **{"data.dev_size": 0}))
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text
    epochs = [r for r in map(json.loads, text.splitlines()) if "dev_loss" in r]
    assert epochs == [{"epoch": 1, "step": epochs[0]["step"], "dev_loss": None, "dev_perplexity": None}]


def test_every_saved_step_is_in_the_metrics_after_a_hard_kill(tmp_path):
    """With every_steps, a step's record was written after the next dispatch, but the save already
    covered it: a kill -9 then dropped records for good."""
    workdir = tmp_path / "run"
    proc = subprocess.Popen(_cmd(workdir, "--config.checkpoint.every_steps=1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(checkpoint_steps(workdir)) < 4:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    saved = checkpoint_steps(workdir)
    logged = [r["step"] + 1 for r in read_metrics(workdir) if "loss" in r]
    assert saved and set(saved) <= set(logged), (saved, logged)


def checkpoint_steps(workdir):
    folder = workdir / "checkpoints"
    return sorted(int(p) for p in os.listdir(folder) if p.isdigit()) if folder.exists() else []


def test_ctrl_c_saves_like_sigterm_and_a_finished_run_says_so(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(_cmd(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if (workdir / "metrics.jsonl").exists() and len((workdir / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert "SIGINT received: saving a checkpoint" in err and "preempted: saved step" in err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "preempted"
    done = subprocess.run(_cmd(workdir), capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout.strip().splitlines()[-1])["status"] == "finished"
    again = subprocess.run(_cmd(workdir), capture_output=True, text=True)
    assert again.returncode == 0 and "has finished: step 100 of 100 is saved; nothing to do" in again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1]) == {"status": "finished", "final_step": None, "loss": None}


def test_a_dev_jsonl_beside_the_training_data_is_the_dev_set(tmp_path):
    """A 100-record train.jsonl with a dev.jsonl beside it used to train on 50: 50 were held out and
    dev.jsonl was ignored, though the README says the folder may hold one."""
    from lima_jax.data import demo_dir
    from lima_jax.data.records import read_conversations

    records, _ = read_conversations(demo_dir() / "train.jsonl")
    data = tmp_path / "data"
    data.mkdir()
    line = lambda r: json.dumps({"conversations": r["conversations"]}) + "\n"  # noqa: E731
    (data / "train.jsonl").write_text("".join(line(r) for r in records[:100]))
    (data / "dev.jsonl").write_text("".join(line(r) for r in records[100:110]))
    r = subprocess.run(_cmd(tmp_path / "run", f"--config.data.manual_dir={data}", "--config.data.dev_size=50",
                            f"--config.data.tokenizer={demo_dir() / 'tokenizer.model'}"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"100 training conversations from {data} and 10 dev conversations from {data / 'dev.jsonl'}" in r.stderr
    written = (tmp_path / "run" / "dev.jsonl").read_text().splitlines()
    assert [json.loads(x)["conversations"] for x in written] == [rec["conversations"] for rec in records[100:110]]
