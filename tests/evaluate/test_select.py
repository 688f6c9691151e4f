"""Checkpoint selection over a tiny run's epoch checkpoints: the table, the plot, judged win rates."""
import json

import pytest

from lima_jax.config import load_config
from lima_jax.evaluate.responses import make_record, write_responses
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


def test_likert_per_epoch_table_and_figure_9_plot(tmp_path):
    """The library on constructed epochs: each epoch's dev answers scored by a scripted server, one
    cache per epoch, and a rerun asks nothing."""
    from support.judges import Reply, ScriptedServer
    from lima_jax.evaluate import selection
    from lima_jax.evaluate.judging import JudgmentCache, make_judge, with_answer_format
    from lima_jax.evaluate.prompts import LIKERT_LINE
    from lima_jax.storage.paths import user_path

    out = user_path(str(tmp_path))
    rows = [{"epoch": e, "step": 10 * e, "dev_loss": 1.0 + e / 10, "dev_perplexity": 2.0 + e} for e in (1, 2)]
    plan = {1: ["2", "3", "I am not sure."], 2: ["5", "6", "5"]}  # epoch 1's third answer is unreadable
    for row in rows:
        (tmp_path / "responses").mkdir(exist_ok=True)
        write_responses(selection.responses_file(out, row),
                        [make_record([f"dev {i}"], f"E{row['epoch']}-{i}", f"epoch {row['epoch']}") for i in range(3)])

    def script(r):
        epoch, i = map(int, r.user_text.split("[Submission]: E")[1].split()[0].split("-"))
        return Reply("Reasoning.\n" + plan[epoch][i])

    with ScriptedServer(script) as server:
        judge = make_judge(judge_checkpoint=None, judge_url=server.url, judge_model="judge-model", timeout_s=2.0,
                           max_retries=1, backoff_s=0.0)  # as select builds it: for pairwise prompts ...
        likert = with_answer_format(judge, LIKERT_LINE)  # ... and the same judge for Likert ones
        assert judge.parser is not likert.parser and likert.name == judge.name
        selection.likert_epochs(rows, likert, selection.open_likert_caches(rows, out), out, samples=200)
        assert server.hits == 2 + 2 + 3  # the unreadable one asked twice
        again = [dict(r) for r in rows]
        selection.likert_epochs(again, likert, selection.open_likert_caches(rows, out), out, samples=200)
        assert server.hits == 9  # only the failure asked again
    first, second = rows
    assert (first["likert_mean"], first["likert_n"], first["likert_failures"]) == (2.5, 2, 1)
    assert (second["likert_mean"], second["likert_n"], second["likert_failures"]) == (5.333, 3, 0)
    assert second["likert_ci_low"] <= 5.333 <= second["likert_ci_high"] <= 6
    assert again == rows
    assert len((tmp_path / "likert" / "step_10.jsonl").read_text().splitlines()) == 2 + 2  # the failure, twice
    table = selection.write_table(rows, out / "select.md")
    assert "Likert mean [95%] | scored | failed |" in table
    assert f"| 2 | 20 | 1.2000 | 4.00 | 5.33 [{second['likert_ci_low']:.2f}, {second['likert_ci_high']:.2f}] | 3 | 0 |" in table
    selection.plot(rows, out / "select.png")
    assert (tmp_path / "select.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_likert_per_epoch_with_a_local_judge(run, tmp_path):
    workdir, _ = run
    ckpt = workdir / "checkpoints" / str(_select(f"--workdir={workdir}", f"--out_dir={tmp_path}")[-1]["step"])
    rows = _select(f"--workdir={workdir}", f"--out_dir={tmp_path}", "--epochs=2-3", "--likert",
                   f"--judge_checkpoint={ckpt}", "--max_new_tokens=8")
    for r in rows:
        assert r["likert_n"] == 4 and r["likert_failures"] == 0 and 1 <= r["likert_mean"] <= 6
        assert r["likert_judge"] == f"local:{ckpt}"
    assert sorted(p.name for p in (tmp_path / "likert").iterdir()) == sorted(f"step_{r['step']}.jsonl" for r in rows)
    r = call_command("evaluate.select", f"--workdir={workdir}", f"--out_dir={tmp_path}", "--likert")
    assert r.returncode == 2 and "--likert needs a judge" in r.stderr
