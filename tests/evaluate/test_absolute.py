"""Absolute Fail/Pass/Excellent rating against a scripted OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import json
import re
import threading

from lima_jax.evaluate.protocols.absolute import judge_absolute, results_from_records
from lima_jax.evaluate.judge.cache import JudgmentCache
from lima_jax.evaluate.answers.records import make_record, write_responses
from lima_jax.evaluate.answers.formats import read_responses
from support.judges import Reply, Request, ScriptedServer, fast_judge
from support.commands import call_command

OUTPUTS = ["GOOD 1", "GOOD 2", "OK 1", "OK 2", "OK 3", "BAD 1", "JUNK 1", "BUSY 1"]


class RatingScript:
    def __init__(self):
        self.fixed = False
        self.busy_hits = 0
        self.lock = threading.Lock()

    def __call__(self, r: Request) -> Reply:
        kind = re.search(r"<<<RESPONSE>>>\n(\w+)", r.user_text).group(1)
        if kind == "BUSY":  # overloaded once, then answers
            with self.lock:
                self.busy_hits += 1
                if self.busy_hits == 1:
                    return Reply(status=503, body="overloaded", headers={"Retry-After": "0"})
            return Reply("Verdict: Pass")
        if kind == "JUNK" and not self.fixed:
            return Reply("This response is a response.")
        rating = {"GOOD": "Excellent", "OK": "pass", "BAD": "**Verdict: FAIL**", "JUNK": "Fail"}[kind]
        return Reply(rating if rating.startswith("**") else f"Reasoning.\nVerdict: {rating}")


def responses(tmp_path):
    path = tmp_path / "lima.jsonl"
    write_responses(path, [make_record([f"Request {i}"], out, "lima-7b") for i, out in enumerate(OUTPUTS)])
    return read_responses(path)


def test_absolute_ratings_failures_and_cache(tmp_path):
    records = responses(tmp_path)
    script = RatingScript()
    cache_path = tmp_path / "ratings.jsonl"
    with ScriptedServer(script) as server:
        judge = fast_judge(server.url, max_retries=1)
        s = judge_absolute(records, judge, JudgmentCache(cache_path), workers=3).summary
        assert (s["Excellent"], s["Pass"], s["Fail"], s["failed"], s["rated"]) == (2, 4, 1, 1, 7)
        assert (s["Excellent_pct"], s["Pass_pct"], s["Fail_pct"]) == (28.6, 57.1, 14.3)
        assert server.hits == 7 + 2 + 1  # JUNK twice (max_retries=1), BUSY twice
        failed = [json.loads(ln) for ln in cache_path.read_text().splitlines() if json.loads(ln)["verdict"] is None]
        assert len(failed) == 1 and failed[0]["raw"] == "This response is a response."

        hits = server.hits  # a rerun re-asks the failed one only
        s = judge_absolute(records, judge, JudgmentCache(cache_path)).summary
        assert server.hits - hits == 2 and s["failed"] == 1 and s["asked"] == 1
        script.fixed = True
        s = judge_absolute(records, judge, JudgmentCache(cache_path)).summary
        assert (s["Fail"], s["failed"], s["rated"], s["asked"]) == (2, 0, 8, 1)
        hits = server.hits
        assert judge_absolute(records, judge, JudgmentCache(cache_path)).summary["asked"] == 0
        assert server.hits == hits
    results, judges = results_from_records(JudgmentCache(cache_path).records)
    assert sorted(results.values()) == sorted(["Excellent"] * 2 + ["Pass"] * 4 + ["Fail"] * 2)
    assert judges == {"judge-model"}


def test_absolute_command(tmp_path):
    responses(tmp_path)
    script = RatingScript()
    with ScriptedServer(script) as server:
        r = call_command("lima_jax.evaluate.absolute", f"--responses={tmp_path / 'lima.jsonl'}",
                    f"--judge_url={server.url}", "--judge_model=judge-model", f"--cache={tmp_path / 'c.jsonl'}",
                    "--backoff_s=0.01", "--max_retries=1", "--workers=2")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["Excellent"], summary["Pass"], summary["Fail"], summary["failed"]) == (2, 4, 1, 1)
    assert "failed judgments for 1 of 8 responses" in r.stderr
