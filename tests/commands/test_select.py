"""`python -m lima_jax.evaluate.select` over a tiny run's epoch checkpoints: the table, the plot, judged win rates and
Likert scores from a local judge."""
import json

import pytest

from lima_jax.config import load_config
from lima_jax.evaluate.answers.records import make_record, write_responses
from lima_jax.data.pipeline import split_conversations
from lima_jax.data.records import read_conversations
from lima_jax.inference.generator import prompt_turns
from lima_jax.train.loop import train
from support.commands import call_command


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("select") / "run"
    config = load_config("tiny", {"workdir": str(workdir), "num_epochs": 3, "batch_size": 32, "data.max_len": 64,
                                  "data.dev_size": 4, "checkpoint.async_save": False})
    train(config)
    return workdir, config


def _select(*args):
    r = call_command("evaluate.select", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_dev_loss_table_and_plot_per_epoch(run, tmp_path):
    workdir, _ = run
    rows = _select(f"--workdir={workdir}", f"--out_dir={tmp_path}")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["dev_loss"] for r in rows] == [m["dev_loss"] for m in metrics if "dev_loss" in m]
    table = (tmp_path / "select.md").read_text()
    assert table.count("\n") == 5 and f"| 3 | {rows[2]['step']} | {rows[2]['dev_loss']:.4f} |" in table
    assert (tmp_path / "select.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["epoch"] for r in _select(f"--workdir={workdir}", f"--out_dir={tmp_path}", "--epochs=2-3")] == [2, 3]


def test_the_run_writes_the_dev_set_it_evaluated_on(run):
    """Selection reads <workdir>/dev.jsonl (data flows forward): it must be the run's own split."""
    workdir, config = run
    written, _ = read_conversations(workdir / "dev.jsonl")
    _, dev, _ = split_conversations(config)
    assert written == [r for r in dev if len(r["conversations"]) >= 2] and len(written) == 4


def test_judged_dev_quality_against_a_reference(run, tmp_path):
    workdir, config = run
    dev, _ = read_conversations(workdir / "dev.jsonl")
    reference = tmp_path / "reference.jsonl"
    write_responses(reference, [make_record(prompt_turns(r["conversations"]), "I do not know.", "reference") for r in dev])
    ckpt = workdir / "checkpoints" / str(_select(f"--workdir={workdir}", f"--out_dir={tmp_path}")[-1]["step"])
    rows = _select(f"--workdir={workdir}", f"--out_dir={tmp_path}", "--epochs=2-3", f"--reference={reference}",
                   f"--judge_checkpoint={ckpt}", "--max_new_tokens=8")
    for r in rows:
        assert r["win_pct"] + r["tie_pct"] + r["loss_pct"] == pytest.approx(100.0) and r["failed"] == 0
    assert "win %" in (tmp_path / "select.md").read_text()
    assert len(list((tmp_path / "responses").glob("step_*.jsonl"))) == 2
    # Answers made with other sampling are not continued as if they were these (issue 27, item 10)
    r = call_command("evaluate.select", f"--workdir={workdir}", f"--out_dir={tmp_path}", "--epochs=2-3",
                     f"--reference={reference}", f"--judge_checkpoint={ckpt}", "--max_new_tokens=8", "--temperature=0.2")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith("use another --out_dir"), r.stderr[-2000:]
    assert "temperature=0.7, not 0.2" in r.stderr


def test_likert_per_epoch_with_a_local_judge(run, tmp_path):
    workdir, _ = run
    ckpt = workdir / "checkpoints" / str(_select(f"--workdir={workdir}", f"--out_dir={tmp_path}")[-1]["step"])
    rows = _select(f"--workdir={workdir}", f"--out_dir={tmp_path}", "--epochs=2-3", "--likert",
                   f"--judge_checkpoint={ckpt}", "--max_new_tokens=8")
    for r in rows:
        assert r["likert_n"] == 4 and r["likert_failures"] == 0 and 1 <= r["likert_mean"] <= 6
        assert r["likert_judge"] == f"local:{ckpt}"
    assert sorted(p.name for p in (tmp_path / "likert").iterdir()) == sorted(f"step_{r['step']}.jsonl" for r in rows)
    r = call_command("evaluate.select", f"--workdir={workdir}", f"--out_dir={tmp_path / 'again'}", "--epochs=3", "--likert",
                     f"--judge_checkpoint={ckpt}", "--max_new_tokens=8")
    assert r.returncode == 0, r.stderr[-2000:]  # every long step shows how far it is (it printed nothing for 10 minutes)
    for line in ("epoch 3: 4/4 prompts answered", "epoch 3: scoring its dev answers 1-6 (Likert)", "judged 4/4 (0 failed)"):
        assert line in r.stderr, r.stderr[-2000:]
    r = call_command("evaluate.select", f"--workdir={workdir}", f"--out_dir={tmp_path}", "--likert")
    assert r.returncode == 2 and "--likert needs a judge" in r.stderr
