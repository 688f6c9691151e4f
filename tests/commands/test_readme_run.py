"""The README's run, as a user runs it: the tiny model fine-tunes on the embedded demo, learns, and answers."""
import json
import os

import numpy as np
from support.commands import USER_ENVIRONMENT, run_command
from support.training import read_metrics

from lima_jax.data import demo_dir


def test_the_default_tiny_run_learns(tmp_path):
    """The README's main command, as a user runs it (only the workdir differs): on this machine's one CPU
    device, not the tests' eight simulated ones. About 40 s (722 steps): the suite's longest default test,
    and the one that shows the recipe learns."""
    workdir = tmp_path / "tiny"
    r = run_command("train", "--config=tiny", f"--config.workdir={workdir}", env=USER_ENVIRONMENT)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = read_metrics(workdir)
    steps = [m for m in metrics if "loss" in m]
    epochs = [m for m in metrics if "dev_loss" in m]
    assert {"step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu"} <= set(steps[0])
    assert [e["epoch"] for e in epochs] == list(range(1, 16))  # a dev loss and a checkpoint per epoch
    assert np.mean([s["loss"] for s in steps[-5:]]) < 0.6 * steps[0]["loss"]
    assert epochs[-1]["dev_loss"] < 0.7 * epochs[0]["dev_loss"]
    assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == [e["step"] for e in epochs]
    assert json.loads((workdir / "config.json").read_text())["model"]["dim"] == 64
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
    # It answers its training questions: which ones word for word depends on the CPU's float rounding (a run
    # with other XLA kernels changed 168 of the demo's 804 answers), how many does not (about two thirds:
    # 65 and 64 of these 100 in those two runs; issue 26 found "3 plus 4 is 10." on another host).
    records = [json.loads(line) for line in (demo_dir() / "train.jsonl").read_text().splitlines()]
    pairs = [r["conversations"] for r in records if len(r["conversations"]) == 2][:100]
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"conversations": [q]}) + "\n" for q, _ in pairs))
    r = run_command("sample", f"--checkpoint={workdir}", f"--prompt_file={prompt_file}", "--temperature=0",
                    "--max_new_tokens=48", env=USER_ENVIRONMENT)
    assert r.returncode == 0, r.stderr[-3000:]
    answers = [json.loads(line)["output"] for line in r.stdout.splitlines()]
    exact = sum(a.strip() == want.strip() for a, (_, want) in zip(answers, pairs))
    assert len(answers) == 100 and exact >= 50, (exact, answers[:10])
