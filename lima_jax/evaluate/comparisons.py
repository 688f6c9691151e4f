r"""Pairwise judging, as in LIMA's preference study: for every prompt answered in both files, which
answer does the judge prefer?

Each pair is judged in both orders (ours as response A, then as response B) to cancel the judge's
position bias. Per prompt: both orders agree -> that win/loss/tie; they disagree -> tie. A prompt
with a failed judgment is counted as failed, never as a tie, and its judgment is asked again on
the next run, as is anything missing; everything else comes from the cache. Prints one summary
JSON line (percentages are of the prompts judged in both orders).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Iterable

from lima_jax.errors import LimaError
from lima_jax.evaluate import judging, prompts
from lima_jax.evaluate.judges import Judge
from lima_jax.evaluate.judging import Judgment, JudgmentCache, RunStats, Task, percent, succeeded
from lima_jax.evaluate.responses import Record, text_hash

ORDERS = ("ours_first", "baseline_first")  # ours is response A, then response B
OUTCOMES = ("win", "tie", "loss")  # from our side


def pair_key(judge: str, prompt_id: str, ours_hash: str, baseline_hash: str, order: str) -> str:
    return judging.judgment_key("pairwise", prompts.PAIRWISE_VERSION, judge, prompt_id, ours_hash, baseline_hash, order)


def order_outcome(order: str, verdict: str) -> str:
    """Our win/tie/loss from one judgment: verdict A favours whichever answer was shown first."""
    if verdict == "C":
        return "tie"
    ours_letter = "A" if order == "ours_first" else "B"
    return "win" if verdict == ours_letter else "loss"


def combine(judgments: dict[str, Judgment | None]) -> tuple[str, bool]:
    """One prompt's result from its two judgments, and whether the orders agreed.

    "missing" when an order was never asked, "failed" when one has no verdict (kept apart from
    ties: a judge that could not answer has not said the answers are equal).
    """
    if any(judgments.get(o) is None for o in ORDERS):
        return "missing", True
    if not all(succeeded(judgments[o]) for o in ORDERS):
        return "failed", True
    seen = {order_outcome(o, judgments[o]["verdict"]) for o in ORDERS}
    return (seen.pop(), True) if len(seen) == 1 else ("tie", False)


def summarize(results: dict[str, tuple[str, bool]]) -> dict[str, Any]:
    counts = {k: sum(1 for outcome, _ in results.values() if outcome == k) for k in (*OUTCOMES, "failed", "missing")}
    judged = sum(counts[k] for k in OUTCOMES)
    summary: dict[str, Any] = {"prompts": len(results), "judged": judged}
    for k in OUTCOMES:
        summary[k] = counts[k]
    for k in OUTCOMES:
        summary[f"{k}_pct"] = percent(counts[k], judged)
    summary["failed"] = counts["failed"]
    summary["missing"] = counts["missing"]
    summary["disagreed"] = sum(1 for outcome, agreed in results.values() if not agreed)
    return summary


@dataclasses.dataclass
class PairwiseResult:
    summary: dict[str, Any]
    results: dict[str, tuple[str, bool]]  # prompt id -> (outcome, orders agreed)
    stats: RunStats


def shared_ids(ours: dict[str, Record], baseline: dict[str, Record]) -> list[str]:
    ids = [i for i in ours if i in baseline]
    if not ids:
        raise LimaError("no prompt id appears in both response files (ids default to a hash of the prompt turns, "
                        "so the prompts must match exactly)")
    for i in ids:
        if ours[i]["prompt"] != baseline[i]["prompt"]:
            raise LimaError(f"prompt id {i!r} has different prompt turns in the two response files (a follow-up asked "
                            "after each model's own answer, like MT-Bench's second turn, is rated with "
                            "lima_jax.evaluate.absolute, not compared)")
    only_ours, only_baseline = len(ours) - len(ids), len(baseline) - len(ids)
    if only_ours or only_baseline:  # e.g. a baseline generated from an older prompt file: say what is left out
        print(f"warning: judging the {len(ids)} prompts both response files answer; left out: {only_ours} answered "
              f"only by ours, {only_baseline} only by the baseline", file=sys.stderr)
    return ids


def judge_pairwise(ours: dict[str, Record], baseline: dict[str, Record], judge: Judge, cache: JudgmentCache,
                   workers: int = 1, max_failures: int | None = None, progress: bool = True) -> PairwiseResult:
    """Judges, in both orders, every prompt answered in both files that the cache has no verdict for."""
    ids = shared_ids(ours, baseline)
    keys: dict[str, dict[str, str]] = {}
    tasks: list[Task] = []
    for pid in ids:
        mine, theirs = ours[pid], baseline[pid]
        ours_hash, baseline_hash = text_hash(mine["output"]), text_hash(theirs["output"])
        keys[pid] = {}
        for order in ORDERS:
            key = pair_key(judge.name, pid, ours_hash, baseline_hash, order)
            keys[pid][order] = key
            if cache.done(key):
                continue
            a, b = (mine, theirs) if order == "ours_first" else (theirs, mine)
            fields = {"kind": "pairwise", "version": prompts.PAIRWISE_VERSION, "prompt_id": pid, "order": order,
                      "ours_hash": ours_hash, "baseline_hash": baseline_hash,
                      "ours_generator": mine["generator"], "baseline_generator": theirs["generator"],
                      # the report's response lengths, without the response files
                      "ours_length": len(mine["output"]), "baseline_length": len(theirs["output"])}
            tasks.append(Task(key, prompts.pairwise_messages(mine["prompt"], a["output"], b["output"]),
                              prompts.PAIRWISE_CHOICES, fields))
    stats = judging.run_tasks(tasks, judge, cache, workers=workers, max_failures=max_failures, progress=progress)
    results = {pid: combine({o: cache.get(keys[pid][o]) for o in ORDERS}) for pid in ids}
    summary = {"judge": judge.name, "ours": ours[ids[0]]["generator"], "baseline": baseline[ids[0]]["generator"],
               **summarize(results),
               "failed_judgments": sum(1 for pid in ids for o in ORDERS
                                       if cache.get(keys[pid][o]) is not None and not cache.done(keys[pid][o])),
               "asked": stats.asked, "only_ours": len(ours) - len(ids), "only_baseline": len(baseline) - len(ids)}
    return PairwiseResult(summary, results, stats)


def _version(record: Judgment) -> tuple:
    return (record.get("version"), record.get("judge"), record.get("ours_hash"), record.get("baseline_hash"))


def judgments_from_records(records: Iterable[Judgment], judge: str | None = None
                           ) -> tuple[dict[str, dict[str, Judgment | None]], set[str]]:
    """Per prompt, the judgment of each order that the report counts, from a cache alone, and the
    judges they come from.

    A prompt's outputs may have been judged more than once (a regenerated answer, a new judge):
    each prompt uses the outputs, judge and prompt version of its most recent judgment.
    """
    by_prompt: dict[str, list[Judgment]] = {}
    for r in records:
        if r.get("kind") != "pairwise" or (judge is not None and r.get("judge") != judge):
            continue
        if not isinstance(r.get("prompt_id"), str) or r.get("order") not in ORDERS:
            raise LimaError(f"a pairwise judgment without a prompt id or order: key {r.get('key')!r}")
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    chosen: dict[str, dict[str, Judgment | None]] = {}
    judges: set[str] = set()
    for pid, rs in by_prompt.items():
        current = _version(rs[-1])
        judges.add(str(current[1]))
        best: dict[str, Judgment] = {}
        for r in rs:
            if _version(r) == current and (succeeded(r) or not succeeded(best.get(r["order"]))):
                best[r["order"]] = r
        chosen[pid] = {o: best.get(o) for o in ORDERS}
    return chosen, judges


def results_from_records(records: Iterable[Judgment], judge: str | None = None) -> tuple[dict[str, tuple[str, bool]], set[str]]:
    """Per-prompt results from a cache alone (for the report), and the judges they come from."""
    chosen, judges = judgments_from_records(records, judge)
    return {pid: combine(orders) for pid, orders in chosen.items()}, judges
