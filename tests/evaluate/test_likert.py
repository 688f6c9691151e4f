"""The Likert judge (LIMA's Appendix D, 1-6) against a scripted OpenAI-compatible server on 127.0.0.1,
and the report's mean scores and intervals on judgment caches built by hand."""
from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest

from support.paths import REPO
from lima_jax.errors import LimaError
from lima_jax.evaluate.judge import prompts
from lima_jax.evaluate.cli import parse_pairwise_flag
from lima_jax.evaluate.protocols.likert import likert_arms
from lima_jax.evaluate.tables import write_report
from lima_jax.evaluate.judge.cache import JudgmentCache
from lima_jax.evaluate.judge.factory import make_judge
from lima_jax.evaluate.answers.records import make_record, prompt_id, write_responses
from lima_jax.evaluate.answers.formats import read_responses
from lima_jax.evaluate.protocols.likert import judge_likert, likert_score, results_from_records
from lima_jax.evaluate.stats import mean_interval
from support.judges import Reply, Request, ScriptedServer
from support.commands import call_command
from support.charts import check_png

OUTPUTS = ["SIX", "FOUR", "TWO", "LATE", "JUNK", "BUSY"]


class LikertScript:
    """Answers per submission: the score on the last line in several dressings, a score that is not on
    the last line (unreadable), junk until fixed, and a 503 once."""

    def __init__(self):
        self.fixed = False
        self.busy_hits = 0
        self.lock = threading.Lock()

    def __call__(self, r: Request) -> Reply:
        kind = re.search(r"\[Submission\]: (\w+)", r.user_text).group(1)
        if kind == "BUSY":
            with self.lock:
                self.busy_hits += 1
                if self.busy_hits == 1:
                    return Reply(status=503, body="overloaded", headers={"Retry-After": "0"})
            return Reply("It helps.\n5\n5")
        if kind == "JUNK":
            return Reply("3" if self.fixed else "I cannot decide.")
        return Reply({"SIX": "Step 1: relevant.\nStep 2: well organized.\n6\n\n6\n",
                      "FOUR": "Reasoning.\n3\nOn reflection, more detail.\n**4**",
                      "TWO": "2",
                      "LATE": "Reasoning.\n5\nThat is my final answer."}[kind])


def write_outputs(tmp_path):
    path = tmp_path / "arm.jsonl"
    write_responses(path, [make_record([f"Request {i} {{with braces}}"], out, "lima-7b") for i, out in enumerate(OUTPUTS)])
    return path


def likert_judge(url: str, **kw):
    opts = dict(timeout_s=2.0, max_retries=1, backoff_s=0.01, max_backoff_s=0.05)
    opts.update(kw)
    return make_judge(judge_checkpoint=None, judge_url=url, judge_model="judge-model", answer=prompts.LIKERT_LINE, **opts)


def test_the_judge_is_asked_with_appendix_d_verbatim_and_nothing_else():
    messages = prompts.likert_messages(["How do I boil an egg?"], "Put it in {task} boiling water.")
    assert len(messages) == 1 and messages[0]["role"] == "user"
    text = messages[0]["content"]
    assert text.startswith("You are evaluating a response that has been submitted for a particular task, using a "
                           "specific set of standards. Below is the data:\n[BEGIN DATA]\n***\n[Task]: How do I boil an "
                           "egg?\n***\n[Submission]: Put it in {task} boiling water.\n***\n[Criterion]: helpfulness:\n")
    assert 'However, the structured of the response is not well-organized' in text  # the paper's typo, kept
    assert text.endswith('Then print the choice only from "1, 2, 3, 4, 5, 6" (without quotes or punctuation) on its '
                         "own line corresponding to the correct answer. At the end, repeat just the selected choice "
                         "again by itself on a new line.")
    assert text.count('": "') == 6 and "{" not in text.replace("{task}", "")


def test_the_template_is_the_one_in_the_paper_notes():
    paper = REPO.parent / "shared" / "design" / "PAPER.md"
    if not paper.exists():
        pytest.skip(f"needs {paper} beside the repo")
    block = re.search(r"Appendix D template.*?```\n(.*?)```", paper.read_text(), re.S).group(1)
    assert prompts.LIKERT_TEMPLATE == block.rstrip("\n")


@pytest.mark.parametrize("answer, score", [
    ("Reasoning.\n4\n4", "4"), ("Reasoning\n6\n\n  6  \n\n", "6"), ("**5**", "5"), ('"3".', "3"), ("1", "1"),
    ("Reasoning.\n4\nThat is all.", None), ("Score: 4", None), ("4/6", None), ("7", None), ("0", None),
    ("4 or 5", None), ("", None), ("\n\n", None), (None, None),
])
def test_the_score_is_read_from_the_last_non_empty_line_only(answer, score):
    assert prompts.parse_likert(answer) == score


def test_likert_scores_retries_failures_and_cache_resume(tmp_path):
    records = read_responses(write_outputs(tmp_path))
    script = LikertScript()
    cache_path = tmp_path / "likert.jsonl"
    with ScriptedServer(script) as server:
        judge = likert_judge(server.url)
        s = judge_likert(records, judge, JudgmentCache(cache_path), workers=3, progress=False).summary
        assert (s["6"], s["5"], s["4"], s["2"], s["scored"], s["failed"], s["missing"]) == (1, 1, 1, 1, 4, 2, 0)
        assert s["mean"] == pytest.approx((6 + 4 + 2 + 5) / 4, abs=1e-3)
        assert server.hits == 3 + 2 + 2 + 2  # LATE and JUNK twice each (max_retries=1), BUSY twice
        sent = next(r for r in server.requests if "[Submission]: TWO" in r.user_text)
        assert sent.body["messages"] == prompts.likert_messages(["Request 2 {with braces}"], "TWO")
        lines = [json.loads(ln) for ln in cache_path.read_text().splitlines()]
        failed = {ln["raw"]: ln for ln in lines if ln["verdict"] is None}
        assert set(failed) == {"Reasoning.\n5\nThat is my final answer.", "I cannot decide."}  # no default score
        assert all(ln["kind"] == "likert" and ln["version"] == prompts.LIKERT_VERSION for ln in lines)
        assert {ln["prompt_hash"] for ln in lines} == {prompt_id([f"Request {i} {{with braces}}"]) for i in range(6)}

        hits = server.hits  # a rerun asks the two failures again and nothing else
        s = judge_likert(records, judge, JudgmentCache(cache_path), progress=False).summary
        assert (server.hits - hits, s["asked"], s["failed"]) == (4, 2, 2)
        script.fixed = True
        s = judge_likert(records, judge, JudgmentCache(cache_path), progress=False).summary
        assert (s["asked"], s["3"], s["scored"], s["failed"]) == (2, 1, 5, 1)
        hits = server.hits
        assert judge_likert(records, judge, JudgmentCache(cache_path), progress=False).summary["asked"] == 1  # LATE
        assert server.hits - hits == 2
    results, judges = results_from_records(JudgmentCache(cache_path).records)
    assert sorted(r.outcome for r in results.values()) == ["2", "3", "4", "5", "6", "failed"]
    assert judges == {"judge-model"}


def test_likert_command_prints_the_summary_and_warns_of_failures(tmp_path):
    path = write_outputs(tmp_path)
    with ScriptedServer(LikertScript()) as server:
        r = call_command("lima_jax.evaluate.likert", f"--responses={path}", f"--judge_url={server.url}",
                    "--judge_model=judge-model", f"--cache={tmp_path / 'c.jsonl'}", "--backoff_s=0.01",
                    "--max_retries=1", "--workers=2", f"--out={tmp_path / 'out.json'}")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["scored"], summary["failed"], summary["mean"], summary["asked"]) == (4, 2, 4.25, 6)
    assert "failed judgments for 2 of 6 responses" in r.stderr
    details = json.loads((tmp_path / "out.json").read_text())["responses"]
    assert sorted(details.values()) == ["2", "4", "5", "6", "failed", "failed"]


def judgment(rid: str, verdict: str | None, prompt: str | None = None, judge: str = "gpt-3.5-turbo",
             generator: str = "lima-7b-se") -> dict:
    return {"key": f"{judge}/{rid}", "kind": "likert", "version": prompts.LIKERT_VERSION, "prompt_id": rid,
            "prompt_hash": prompt or rid, "output_hash": "h", "generator": generator, "judge": judge,
            "verdict": verdict, "raw": verdict or "unreadable", "error": None if verdict else "no readable verdict"}


def write_cache(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_mean_and_interval_resample_prompts_with_all_their_samples():
    scores = {f"p{i}": [s] for i, s in enumerate([6, 5, 5, 4, 4, 4, 3, 2, 2, 1])}
    mean, lo, hi = mean_interval(scores, samples=2000, seed=3)
    values = np.array([s for (s,) in scores.values()], np.float64)  # the plain bootstrap of the mean, by hand
    draws = np.random.default_rng(3).integers(0, len(values), size=(2000, len(values)))
    expected = np.percentile(values[draws].mean(axis=1), [2.5, 97.5])
    assert mean == 3.6 and (lo, hi) == pytest.approx(tuple(expected), abs=1e-12)
    assert 2.5 < lo < 3.6 < hi < 4.7
    # Five identical samples per prompt: the same prompts, the same interval (not five times narrower).
    assert mean_interval({p: v * 5 for p, v in scores.items()}, samples=2000, seed=3) == (mean, lo, hi)
    assert mean_interval({"a": [4, 4], "b": [4]}) == (4.0, 4.0, 4.0)
    assert all(np.isnan(mean_interval({})))


def test_a_failed_then_rescored_response_counts_once_and_failures_apart(tmp_path):
    records = [judgment("r1", None, "p1"), judgment("r1", "5", "p1"), judgment("r2", "3", "p1"),
               judgment("r3", None, "p2"), judgment("r4", "6", "p3"), judgment("r5", "2", "p3")]
    arm = likert_score("SE", records)
    assert (arm.n, arm.failures, arm.prompts, arm.mean, arm.judges) == (4, 1, 2, 4.0, ["gpt-3.5-turbo"])
    assert arm.ci_low <= 4.0 <= arm.ci_high
    assert likert_score("SE", records, judge="another-judge") is None


def test_report_adds_the_likert_arms_to_markdown_json_and_a_chart(tmp_path):
    filtered = write_cache(tmp_path / "filtered.jsonl", [judgment(f"f{i}", s) for i, s in enumerate("5444433")]
                           + [judgment("f-bad", None)])
    wikihow = write_cache(tmp_path / "wikihow.jsonl", [judgment(f"w{i}", s, generator="lima-7b-wikihow")
                                                       for i, s in enumerate("4433332")])
    failed = write_cache(tmp_path / "failed.jsonl", [judgment("x", None)])
    arms = likert_arms(parse_pairwise_flag(f"Filtered SE={filtered},{wikihow},Broken={failed}",
                                       "likert"), samples=500, seed=0)
    text = write_report(str(tmp_path / "out"), [], None, samples=500, seed=0, likert_scores=arms)
    got = json.loads((tmp_path / "out" / "report.json").read_text())["likert"]
    assert [(a["name"], a["mean"], a["n"], a["failures"]) for a in got] == [
        ("Filtered SE", 3.857, 7, 1), ("lima-7b-wikihow", 3.143, 7, 0), ("Broken", None, 0, 1)]
    first = got[0]
    values = np.array([5, 4, 4, 4, 4, 3, 3], np.float64)
    draws = np.random.default_rng(0).integers(0, 7, size=(500, 7))
    lo, hi = np.percentile(values[draws].mean(axis=1), [2.5, 97.5])
    assert (first["ci_low"], first["ci_high"]) == (round(lo, 3), round(hi, 3))
    assert got[2]["ci_low"] is None and got[2]["ci_high"] is None
    assert "## Likert helpfulness, 1-6 (judge: gpt-3.5-turbo)" in text
    assert f"| Filtered SE | 3.86 | [{lo:.2f}, {hi:.2f}] | 7 | 1 | 7 |" in text
    assert "| Broken | n/a | n/a | 0 | 1 | 0 |" in text and "Failures: 2 responses in all" in text
    check_png(tmp_path / "out" / "likert.png")
    assert not (tmp_path / "out" / "pairwise.png").exists() and not (tmp_path / "out" / "absolute.png").exists()


def test_report_refuses_a_cache_of_two_judges_or_with_no_likert_judgment(tmp_path):
    mixed = write_cache(tmp_path / "mixed.jsonl", [judgment("a", "4"), judgment("b", "5", judge="gpt-4")])
    with pytest.raises(LimaError, match="several judges"):
        likert_arms([("SE", mixed)])
    assert likert_arms([("SE", mixed)], judge="gpt-4")[0].mean == 5.0
    other = write_cache(tmp_path / "absolute.jsonl", [{"key": "k", "kind": "absolute", "prompt_id": "p",
                                                         "judge": "j", "verdict": "Pass"}])
    with pytest.raises(LimaError, match="no Likert judgments"):
        likert_arms([("SE", other)])
    with pytest.raises(LimaError, match="--likert: .* should be NAME=PATH"):
        parse_pairwise_flag("SE=", "likert")


def test_report_command_with_likert_only(tmp_path):
    se = write_cache(tmp_path / "se.jsonl", [judgment(f"s{i}", s) for i, s in enumerate("6543")])
    out = tmp_path / "out"
    r = call_command("lima_jax.evaluate.report", f"--likert=Filtered SE={se}", f"--out_dir={out}", "--bootstrap=200")
    assert r.returncode == 0, r.stderr
    assert "| Filtered SE | 4.50 |" in r.stdout
    assert json.loads((out / "report.json").read_text())["likert"][0]["n"] == 4
    again = call_command("lima_jax.evaluate.report", f"--likert=Filtered SE={se}", f"--out_dir={out}")
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
