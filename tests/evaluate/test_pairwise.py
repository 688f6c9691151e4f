"""Pairwise judging end to end against a scripted OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import collections
import json
import re
import threading

import pytest

from lima_jax.errors import LimaError
from lima_jax.evaluate.judge.openai import OpenAIJudge
from lima_jax.evaluate.judge.cache import JudgmentCache
from lima_jax.evaluate.protocols.pairwise import judge_pairwise, results_from_records
from lima_jax.evaluate.answers.records import make_record, write_responses
from lima_jax.evaluate.answers.formats import read_responses
from support.commands import call_command
from support.judges import Reply, Request, ScriptedServer, fast_judge

# How the scripted judge treats each prompt (its name is in the prompt text).
BEHAVIOUR = ["win", "loss", "tie", "biased", "garbage", "flaky", "slow"]


def write_pair(tmp_path, names=BEHAVIOUR, extra_ours=(), extra_base=()):
    ours = [make_record([f"PROMPT-{n}: please help"], f"OURS answer to {n}", "lima") for n in (*names, *extra_ours)]
    base = [make_record([f"PROMPT-{n}: please help"], f"BASE answer to {n}", "alpaca") for n in (*names, *extra_base)]
    write_responses(tmp_path / "ours.jsonl", ours)
    write_responses(tmp_path / "base.jsonl", base)
    return read_responses(tmp_path / "ours.jsonl"), read_responses(tmp_path / "base.jsonl")


class Script:
    """Answers by which output is shown as response A; state per (prompt, order) for flaky ones."""

    def __init__(self):
        self.fixed = False  # the garbage prompt gets a real answer once set
        self.seen: collections.Counter = collections.Counter()
        self.orders: dict[str, set[bool]] = collections.defaultdict(set)
        self.lock = threading.Lock()

    def __call__(self, r: Request) -> Reply:
        text = r.user_text
        name = re.search(r"PROMPT-(\w+)", text).group(1)
        ours_is_a = text.index("OURS answer") < text.index("BASE answer")
        with self.lock:
            self.seen[name, ours_is_a] += 1
            n = self.seen[name, ours_is_a]
            self.orders[name].add(ours_is_a)
        prefer_ours = "A" if ours_is_a else "B"
        prefer_base = "B" if ours_is_a else "A"
        if name == "win":
            return Reply(f"Ours is better.\nVerdict: {prefer_ours}")
        if name == "loss":
            return Reply(f"Verdict: {prefer_base}")
        if name == "tie":
            return Reply("Equally good.\nVerdict: C")
        if name == "biased":  # always the first answer: the two orders disagree
            return Reply("Verdict: A")
        if name == "garbage":
            return Reply(f"Verdict: {prefer_ours}") if self.fixed else Reply("Hmm, hard to say.")
        if name == "flaky":  # a rate limit, then a server error, then an answer
            if n == 1:
                return Reply(status=429, body='{"error": "rate limited"}', headers={"Retry-After": "0"})
            if n == 2:
                return Reply(status=500, body='{"error": "internal"}')
            return Reply(f"Verdict: {prefer_ours}")
        if name == "slow":  # the first answer comes after the client's timeout
            return Reply(f"Verdict: {prefer_base}", delay_s=0.8 if n == 1 else 0.0)
        raise AssertionError(name)


def test_pairwise_counts_orders_failures_and_cache(tmp_path):
    ours, base = write_pair(tmp_path)
    script = Script()
    cache_path = tmp_path / "judgments.jsonl"
    with ScriptedServer(script) as server:
        judge = fast_judge(server.url, timeout_s=0.3, max_retries=2)
        first = judge_pairwise(ours, base, judge, JudgmentCache(cache_path), workers=4)
        s = first.summary
        assert (s["win"], s["tie"], s["loss"]) == (2, 2, 2)  # win+flaky, tie+biased, loss+slow
        assert (s["judged"], s["failed"], s["missing"], s["disagreed"]) == (6, 1, 0, 1)
        assert (s["win_pct"], s["tie_pct"], s["loss_pct"]) == (33.3, 33.3, 33.3)
        assert s["failed_judgments"] == 2 and s["asked"] == 14
        assert s["ours"] == "lima" and s["baseline"] == "alpaca" and s["judge"] == "judge-model"
        assert first.results[read_key(ours, "biased")] == ("tie", False)
        assert first.results[read_key(ours, "garbage")] == ("failed", True)  # not a tie
        assert all(script.orders[n] == {True, False} for n in BEHAVIOUR)  # both orders asked
        # 1 request per order, garbage 3 (max_retries=2), flaky 3, slow 2.
        assert server.hits == 2 * (4 + 3 + 3 + 2)

        lines = [json.loads(ln) for ln in cache_path.read_text().splitlines()]
        assert len(lines) == 14
        failure = [r for r in lines if r["verdict"] is None]
        assert len(failure) == 2 and all("no readable verdict" in r["error"] for r in failure)
        assert {r["raw"] for r in failure} == {"Hmm, hard to say."}
        assert {r["order"] for r in lines} == {"ours_first", "baseline_first"}
        assert all(r["judge"] == "judge-model" and r["kind"] == "pairwise" for r in lines)
        ok = next(r for r in lines if r["prompt_id"] == read_key(ours, "win") and r["order"] == "baseline_first")
        assert ok["verdict"] == "B" and ok["raw"] == "Ours is better.\nVerdict: B" and ok["error"] is None

        # A rerun asks only the failed judgments (which fail again)...
        hits = server.hits
        second = judge_pairwise(ours, base, judge, JudgmentCache(cache_path), workers=4)
        assert server.hits - hits == 2 * 3 and second.summary["asked"] == 2
        assert second.summary["failed"] == 1 and second.summary["tie"] == 2
        # ...until the judge answers them; then nothing is failed and nothing else was re-asked.
        script.fixed = True
        hits = server.hits
        third = judge_pairwise(ours, base, judge, JudgmentCache(cache_path), workers=4)
        assert server.hits - hits == 2 and third.summary["asked"] == 2
        assert (third.summary["win"], third.summary["tie"], third.summary["loss"], third.summary["failed"]) == (3, 2, 2, 0)
        # A complete cache asks nothing.
        hits = server.hits
        fourth = judge_pairwise(ours, base, judge, JudgmentCache(cache_path), workers=4)
        assert server.hits == hits and fourth.summary["asked"] == 0 and fourth.summary == {**third.summary, "asked": 0}

    # The cache alone gives the same per-prompt results (what the report reads).
    results, judges = results_from_records(JudgmentCache(cache_path).records)
    assert results == third.results and judges == {"judge-model"}


def read_key(records, name):
    return next(pid for pid, r in records.items() if f"PROMPT-{name}:" in r["prompt"][0])


def prefer_ours_unless_worse(r: Request) -> Reply:
    """Prefers our answer, unless it says it is worse."""
    text = r.user_text
    ours_is_a = text.index("OURS") < text.index("BASE")
    ours_wins = "worse" not in text[text.index("OURS"):].split("<<<")[0]
    return Reply(f"Verdict: {'A' if ours_is_a == ours_wins else 'B'}")


def test_only_shared_prompts_are_judged_and_new_outputs_are_rejudged(tmp_path):
    ours, base = write_pair(tmp_path, names=["one", "two"], extra_ours=["three"], extra_base=["four"])
    with ScriptedServer(prefer_ours_unless_worse) as server:
        judge = fast_judge(server.url)
        cache = JudgmentCache(tmp_path / "c.jsonl")
        s = judge_pairwise(ours, base, judge, cache).summary
        assert server.hits == 4 and (s["prompts"], s["only_ours"], s["only_baseline"]) == (2, 1, 1)
        assert (s["win"], s["loss"]) == (2, 0)
        # A regenerated answer is judged afresh (2 orders); the other prompt comes from the cache.
        ours[read_key(ours, "one")]["output"] = "OURS, now a worse answer"
        s = judge_pairwise(ours, base, judge, cache).summary
        assert server.hits == 6 and (s["win"], s["loss"]) == (1, 1)
        # Another judge asks everything afresh.
        other = OpenAIJudge(server.url, "other-judge", backoff_s=0.01)
        s = judge_pairwise(ours, base, other, cache).summary
        assert server.hits == 10 and (s["win"], s["loss"]) == (1, 1)
    # From the cache alone: each prompt's latest outputs and judge.
    results, judges = results_from_records(cache.records)
    assert judges == {"other-judge"} and sorted(o for o, _ in results.values()) == ["loss", "win"]
    results, judges = results_from_records(cache.records, judge="judge-model")
    assert judges == {"judge-model"} and sorted(o for o, _ in results.values()) == ["loss", "win"]


def test_mismatched_prompts_and_disjoint_files_are_errors(tmp_path):
    ours, base = write_pair(tmp_path, names=["win"])
    with ScriptedServer(Script()) as server:
        judge = fast_judge(server.url)
        base_other = {k + "x": v for k, v in base.items()}
        with pytest.raises(LimaError, match="no prompt id appears in both"):
            judge_pairwise(ours, base_other, judge, JudgmentCache(tmp_path / "c.jsonl"))
        pid = next(iter(ours))
        base[pid] = {**base[pid], "prompt": ["something else"]}
        with pytest.raises(LimaError, match="different prompt turns"):
            judge_pairwise(ours, base, judge, JudgmentCache(tmp_path / "c.jsonl"))
        assert server.hits == 0


def test_too_many_failures_stop_the_run(tmp_path):
    ours = {f"p{i}": make_record([f"PROMPT-garbage: {i}"], f"OURS answer {i}", "lima") for i in range(5)}
    base = {f"p{i}": make_record([f"PROMPT-garbage: {i}"], f"BASE answer {i}", "alpaca") for i in range(5)}
    with ScriptedServer(lambda r: Reply("no idea")) as server:
        result = judge_pairwise(ours, base, fast_judge(server.url, max_retries=0), JudgmentCache(tmp_path / "c.jsonl"),
                                workers=1, max_failures=3)
        assert result.stats.stopped and result.stats.asked == 3 and server.hits == 3
        assert result.summary["failed"] + result.summary["missing"] == 5 and result.summary["judged"] == 0


def test_a_rejected_key_stops_the_run_without_recording_failures(tmp_path):
    ours, base = write_pair(tmp_path, names=["win", "loss", "tie"])
    with ScriptedServer(lambda r: Reply(status=401, body='{"error": "invalid api key"}')) as server:
        with pytest.raises(LimaError, match="HTTP 401.*invalid api key"):
            judge_pairwise(ours, base, fast_judge(server.url), JudgmentCache(tmp_path / "c.jsonl"), workers=1)
        assert server.hits == 1
    assert not (tmp_path / "c.jsonl").exists()


def test_cache_survives_a_partial_last_line(tmp_path):
    path = tmp_path / "c.jsonl"
    good = {"key": "k1", "verdict": "A", "raw": "Verdict: A", "error": None}
    failed = {"key": "k2", "verdict": None, "raw": "?", "error": "no readable verdict"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(failed) + "\n" + '{"key": "k3", "verd')
    cache = JudgmentCache(path)
    assert cache.done("k1") and not cache.done("k2") and cache.get("k2") == failed and cache.get("k3") is None
    cache.append({"key": "k2", "verdict": "B", "raw": "Verdict: B", "error": None})
    assert [json.loads(ln)["key"] for ln in path.read_text().splitlines()] == ["k1", "k2", "k2"]
    assert JudgmentCache(path).done("k2")
    path.write_text("{oops\n" + json.dumps(good) + "\n")
    with pytest.raises(LimaError, match=r"c\.jsonl:1:"):
        JudgmentCache(path)


def test_pairwise_command(tmp_path):
    write_pair(tmp_path)
    script = Script()
    script.fixed = True
    with ScriptedServer(script) as server:
        args = [f"--ours={tmp_path / 'ours.jsonl'}", f"--baseline={tmp_path / 'base.jsonl'}",
                f"--judge_url={server.url}", "--judge_model=judge-model", f"--cache={tmp_path / 'c.jsonl'}",
                "--timeout_s=0.3", "--backoff_s=0.01", "--max_retries=2", "--workers=3", f"--out={tmp_path / 'out.json'}"]
        r = call_command("lima_jax.evaluate.pairwise", *args)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert (summary["win"], summary["tie"], summary["loss"], summary["failed"]) == (3, 2, 2, 0)
        out = json.loads((tmp_path / "out.json").read_text())
        assert out["summary"] == summary and sorted(out["prompts"].values()).count("win") == 3

        r = call_command("lima_jax.evaluate.pairwise", *args[:2], f"--cache={tmp_path / 'c.jsonl'}")
        assert r.returncode == 2 and r.stderr.strip() == "error: --judge_url and --judge_model (or --judge_checkpoint) are required"


def test_a_judgment_cache_pointed_at_an_unrelated_one_line_file_is_refused_untouched(tmp_path):
    from lima_jax.evaluate.judge.cache import JudgmentCache

    notes = tmp_path / "notes.txt"
    notes.write_text("remember to judge epoch 5")
    with pytest.raises(LimaError, match=rf"^{notes}:1: not JSON; it is not a judgment cache"):
        JudgmentCache(notes)
    assert notes.read_text() == "remember to judge epoch 5"


def test_response_files_that_answer_partly_different_prompts_warn_with_the_counts_left_out(capsys):
    from lima_jax.evaluate.protocols.pairwise import shared_ids
    from lima_jax.evaluate.answers.records import make_record

    ours = {r["id"]: r for r in (make_record([p], "a", "ours") for p in ("p1", "p2", "p3", "p4"))}
    baseline = {r["id"]: r for r in (make_record([p], "b", "base") for p in ("p2", "p3", "p5"))}
    assert [ours[i]["prompt"] for i in shared_ids(ours, baseline)] == [["p2"], ["p3"]]
    assert capsys.readouterr().err == ("warning: judging the 2 prompts both response files answer; left out: 2 answered "
                                       "only by ours, 1 only by the baseline\n")
    shared_ids(ours, ours)
    assert capsys.readouterr().err == ""
