"""Ablation grids (`python -m lima_jax.ablate`): seeded draws with provenance, the paper's grids, the K-sample
response ids, the report, and that a second invocation redoes nothing (judged by a scripted
OpenAI-compatible server on 127.0.0.1 that counts its requests; the slow test runs the tiny grid for real)."""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys

import numpy as np
import pytest

from support.paths import REPO
from lima_jax.ablate import plan, report, runner
from lima_jax.data import demo_dir
from lima_jax.errors import LimaError
from lima_jax.evaluate.answers.records import make_record, prompt_id, write_responses
from lima_jax.evaluate.answers.formats import read_responses
from support.charts import check_png
from support.judges import Reply, Request, ScriptedServer


def write_source(path, n: int) -> list[str]:
    lines = [json.dumps({"conversations": [f"Question {i}?", f"Answer {i}."], "source": "test",
                         "meta": {"url": f"https://example.org/q/{i}"}}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return lines


def test_draws_are_seeded_nested_and_share_one_dev_set():
    small, dev_small = plan.draw_indices(100, 10, 5, seed=3)
    large, dev_large = plan.draw_indices(100, 40, 5, seed=3)
    everything, dev_all = plan.draw_indices(100, 0, 5, seed=3)
    assert len(small) == 10 and len(large) == 40 and len(everything) == 95
    assert set(small) < set(large) < set(everything)  # a larger arm only adds examples
    assert list(dev_small) == list(dev_large) == list(dev_all) and len(dev_all) == 5
    assert not set(dev_all) & set(everything)
    assert list(plan.draw_indices(100, 10, 5, seed=3)[0]) == list(small)
    assert list(plan.draw_indices(100, 10, 5, seed=4)[0]) != list(small)


def test_an_arm_keeps_its_drawn_lines_verbatim_with_their_ids(tmp_path):
    source = tmp_path / "se.jsonl"
    lines = write_source(source, 30)
    arm = plan.Arm("se_10", str(source), 10, tmp_path / "grid" / "se_10")
    summary = plan.prepare_data(arm, dev_size=4, seed=0)
    assert (summary["train_examples"], summary["dev_examples"], summary["source_examples"]) == (10, 4, 30)
    draw = json.loads((arm.data_dir / "draw.json").read_text())
    import hashlib

    assert draw["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest() and draw["seed"] == 0
    for split, name in (("train", "train.jsonl"), ("dev", "dev.jsonl")):
        written = (arm.data_dir / name).read_text().splitlines()
        assert written == [lines[d["line"] - 1] for d in draw[split]]  # the source's lines, meta and all
        assert [d["id"] for d in draw[split]] == [json.loads(w)["meta"]["url"] for w in written]
    before = (arm.data_dir / "train.jsonl").stat().st_mtime_ns
    assert plan.prepare_data(arm, dev_size=4, seed=0) == summary  # a rerun keeps the draw
    assert (arm.data_dir / "train.jsonl").stat().st_mtime_ns == before
    with pytest.raises(LimaError, match=r"drawn with other size, seed \(size=10, seed=0\)"):
        plan.prepare_data(plan.Arm("se_10", str(source), 12, arm.dir), dev_size=4, seed=1)
    with pytest.raises(LimaError, match=r"has 30 examples; the arm needs 40 to train on \+ 4"):
        plan.prepare_data(plan.Arm("big", str(source), 40, tmp_path / "big"), dev_size=4, seed=0)
    source.write_text(source.read_text() + '{"conversations": "not a list"}\n')
    with pytest.raises(LimaError, match=rf"{re.escape(str(source))}:31: "):
        plan.prepare_data(plan.Arm("bad", str(source), 5, tmp_path / "bad"), dev_size=4, seed=0)


def test_checkpoint_choices():
    assert plan.Choice.parse("last") == plan.Choice("last")
    assert plan.Choice.parse("epoch:10") == plan.Choice("epoch", 10, 10)
    assert plan.Choice.parse("likert:5-10") == plan.Choice("likert", 5, 10)
    assert plan.Choice.parse("dev_loss") == plan.Choice("dev_loss")
    for bad in ("best", "epoch:5-10", "epoch", "likert:five"):
        with pytest.raises(LimaError, match="grid key checkpoint="):
            plan.Choice.parse(bad)


def test_the_papers_grids():
    quality, diversity, quantity = (plan.load_grid(n) for n in ("quality", "diversity", "quantity"))
    assert [(a.name, a.data, a.size) for a in plan.arms(quality)] == [
        ("se_filtered", "data/se_filtered.jsonl", 2000), ("se_unfiltered", "data/se_unfiltered.jsonl", 2000)]
    assert [(a.name, a.size) for a in plan.arms(diversity)] == [("se_filtered", 2000), ("wikihow", 2000)]
    assert [a.size for a in plan.arms(quantity)] == [2000, 4000, 8000, 16000, 32000]
    assert {a.data for a in plan.arms(quantity)} == {"data/se_filtered.jsonl"}
    for grid in (quality, diversity, quantity):  # LIMA §5: 7B, 5 samples per prompt, ChatGPT's 1-6 scores
        assert (grid.base, grid.samples_per_prompt, grid.judge.model) == ("7b", 5, "gpt-3.5-turbo")
        assert (grid.sampling.temperature, grid.sampling.top_p, grid.sampling.repetition_penalty) == (0.7, 0.9, 1.2)
        with pytest.raises(LimaError, match=r"grid key train.init_checkpoint: empty; set it with "
                                            r"--grid.train.init_checkpoint="):
            runner.run_grid(grid)
    config = plan.train_config(quality, plan.arms(quality)[0])
    assert (config.batch_size, config.model.residual_dropout, config.num_epochs) == (64, 0.2, 15)
    assert config.data.manual_dir.endswith("se_filtered/data")
    sharded = plan.load_grid("quality", {"train.mesh.fsdp": 8, "train.init_checkpoint": "/ckpt/llama-7b"})
    config = plan.train_config(sharded, plan.arms(sharded)[1])  # any key of the base config, type-checked
    assert (config.mesh.fsdp, config.init_checkpoint) == (8, "/ckpt/llama-7b")
    assert config.workdir.endswith("runs/ablations/quality/se_unfiltered/run")
    with pytest.raises(LimaError, match="config key train.mesh.fsdp"):
        plan.load_grid("quality", {"train.mesh.fsdp": "eight"})


def _grid(tmp_path, url: str):
    source = tmp_path / "source.jsonl"
    write_source(source, 40)
    prompts = tmp_path / "test.jsonl"
    prompts.write_text("".join(json.dumps({"conversations": [f"Test prompt {i}?"]}) + "\n" for i in range(3)))
    return plan.grid_config(
        "unit", "tiny", {"few": {"data": str(source), "size": 10}, "more": {"data": str(source), "size": 30}},
        train={"data": {"tokenizer": str(demo_dir() / "tokenizer.model"), "dev_size": 4}},
        workdir=str(tmp_path / "grid"), test_prompts=str(prompts), samples_per_prompt=2, checkpoint="last",
        judge={"url": url, "model": "judge-model", "workers": 1, "max_retries": 1})


def _score(r: Request) -> Reply:
    """A score that the submission names: 'answer ... (score S)'."""
    score = re.search(r"score (\d)", r.user_text).group(1)
    return Reply("Reasoning.\n" + score)


def test_k_samples_are_judged_once_and_a_rerun_redoes_nothing(tmp_path):
    """The arms' runs and samples are put in place as training and generation would leave them (arm.json
    says trained, the checkpoint chosen; sample files complete), so nothing here compiles: the runner must
    neither train nor load the (absent) checkpoint, and must ask the judge once per sample, then never."""
    with ScriptedServer(_score) as server:
        grid = _grid(tmp_path, server.url)
        questions = runner.test_questions(grid)
        scores = {"few": [[2, 3], [4, 4], [1, 2]], "more": [[5, 6], [5, 4], [6, 6]]}
        for arm in plan.arms(grid):
            (arm.dir / "samples").mkdir(parents=True)
            (arm.dir / runner.STATE_FILE).write_text(json.dumps(
                {"trained": {"final_step": 9}, "checkpoint": {"choice": "last", "step": 9, "epoch": None,
                                                              "path": str(tmp_path / "absent")}}))
            for k in (1, 2):
                write_responses(runner.sample_file(arm, k), [
                    make_record(q.prompt([]), f"answer {k} (score {scores[arm.name][i][k - 1]})", arm.name)
                    for i, q in enumerate(questions)])
        work = runner.run_grid(grid, say=lambda line: None)
        assert {n: (w.trained, w.chose, w.generated, w.judged) for n, w in work.items()} == {
            "few": (False, False, 0, 6), "more": (False, False, 0, 6)}
        assert server.hits == 12
        few = plan.arms(grid)[0]
        merged = read_responses(few.dir / runner.RESPONSES_FILE)
        ids = [prompt_id(q.prompt([])) for q in questions]
        assert list(merged) == [f"{i}#{k}" for i in ids for k in (1, 2)]
        assert not few.run_dir.exists()  # not trained again
        again = runner.run_grid(grid, say=lambda line: None)
        assert all((w.trained, w.chose, w.generated, w.judged) == (False, False, 0, 0) for w in again.values())
        assert server.hits == 12
        grid.sampling.temperature = 0.5  # samples of other settings are never passed off as this grid's
        with pytest.raises(LimaError, match=r"arm few: its samples were drawn with other temperature \(temperature=0.7\)"):
            runner.run_grid(grid, say=lambda line: None)
        grid.sampling.temperature, grid.checkpoint = 0.7, "dev_loss"
        with pytest.raises(LimaError, match="arm few: its samples are from the checkpoint chosen by 'last' "):
            runner.run_grid(grid, say=lambda line: None)
        grid.checkpoint = "last"
    written = report.write_report(grid, samples=200)
    for row in written["arms"]:
        flat = [s for per_prompt in scores[row["name"]] for s in per_prompt]
        assert row["mean"] == round(statistics.fmean(flat), 3) and (row["n"], row["prompts"]) == (6, 3)
        assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["judges"] == ["judge-model"]
        assert row["train_examples"] == {"few": 10, "more": 30}[row["name"]] and row["dev_examples"] == 4
    out = tmp_path / "grid" / "report"
    assert "| more | 30 | 40 |" in (out / "report.md").read_text()
    for png in ("likert.png", "quantity.png"):
        check_png(out / png)


def test_grid_errors_are_one_line(tmp_path):
    grid = _grid(tmp_path, "http://127.0.0.1:9/v1")
    grid.judge.checkpoint = "arm:few"
    with pytest.raises(LimaError, match="give judge.checkpoint .* or judge.url"):
        runner.run_grid(grid)
    grid.judge.url = ""
    grid.checkpoint = "likert:1-2"
    with pytest.raises(LimaError, match="an arm's checkpoint cannot judge"):
        runner.run_grid(grid)
    grid.checkpoint = "last"
    grid.train.workdir = "elsewhere"
    with pytest.raises(LimaError, match="grid key train.workdir: set by ablate"):
        runner.run_grid(grid)
    for flags, message in ((["--grid=nonesuch"], "unknown grid 'nonesuch'"),
                           (["--grid=tiny", "--grid.arms.demo.sized=1"],
                            "error: --grid.arms.demo.sized: unknown config key 'sized' in arms.demo (known: data, size)\n")):
        r = subprocess.run([sys.executable, "-m", "lima_jax.ablate", *flags], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_tiny_grid_end_to_end_and_again(tmp_path):
    """The shipped CPU grid: two tiny runs on the demo data, K=2 samples per prompt, a local judge; the
    second invocation trains, generates and judges nothing."""
    command = [sys.executable, "-m", "lima_jax.ablate", "--grid=configs/ablations/tiny.py",
               f"--grid.workdir={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    done = json.loads(first.stdout.strip().splitlines()[-1])
    assert {n: (d["trained"], d["generated"], d["judged"]) for n, d in done.items()} == {
        "demo": (True, 12, 12), "demo_200": (True, 12, 12)}
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    for row in written["arms"]:
        cache = [json.loads(line) for line in (tmp_path / row["name"] / "likert.jsonl").read_text().splitlines()]
        assert row["mean"] == round(float(np.mean([int(c["verdict"]) for c in cache])), 3) and row["n"] == 12
        assert row["judges"] == [f"local:{tmp_path}/demo/run/checkpoints/{written['arms'][0]['step']}"]
    metrics = (tmp_path / "demo" / "run" / "metrics.jsonl").stat().st_mtime_ns
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    redone = json.loads(again.stdout.strip().splitlines()[-1])
    assert all((d["trained"], d["chose"], d["generated"], d["judged"]) == (False, False, 0, 0) for d in redone.values())
    assert (tmp_path / "demo" / "run" / "metrics.jsonl").stat().st_mtime_ns == metrics
