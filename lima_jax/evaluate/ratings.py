r"""Absolute rating, as in LIMA's analysis: is each response Fail, Pass or Excellent?

Fail: the response does not meet the request's requirements; Pass: it meets them; Excellent: it
meets them and is excellent. Judgments are cached and retried like pairwise ones; a failed
judgment is counted as failed, not as any rating. Prints one summary JSON line (percentages are of
the rated responses).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from lima_jax.errors import LimaError
from lima_jax.evaluate import judging, prompts
from lima_jax.evaluate.judges import Judge, Messages
from lima_jax.evaluate.judging import Judgment, JudgmentCache, outcome, percent, succeeded
from lima_jax.evaluate.responses import Record

RATINGS = prompts.ABSOLUTE_CHOICES


def summarize(results: dict[str, str]) -> dict[str, Any]:
    counts = {k: sum(1 for v in results.values() if v == k) for k in (*RATINGS, "failed", "missing")}
    rated = sum(counts[k] for k in RATINGS)
    summary: dict[str, Any] = {"responses": len(results), "rated": rated}
    summary.update({k: counts[k] for k in RATINGS})
    summary.update({f"{k}_pct": percent(counts[k], rated) for k in RATINGS})
    summary.update(failed=counts["failed"], missing=counts["missing"])
    return summary


AbsoluteResult = judging.Judged


def judge_absolute(responses: dict[str, Record], judge: Judge, cache: JudgmentCache, workers: int = 1,
                   max_failures: int | None = None, progress: bool = True, version: str = prompts.ABSOLUTE_VERSION,
                   messages: Callable[[list[str], str], Messages] = prompts.absolute_messages) -> AbsoluteResult:
    """Rates every response the cache has no verdict for; `messages` asks the judge (the prompt of
    `version`: a dialogue's turns are asked with `prompts.dialogue_absolute_messages`)."""
    results, stats = judging.judge_each(responses, judge, cache, kind="absolute", version=version, choices=RATINGS,
                                        messages=messages, workers=workers, max_failures=max_failures, progress=progress)
    return judging.Judged.of(responses, judge, results, stats, summarize(results))


def results_from_records(records: Iterable[Judgment], judge: str | None = None) -> tuple[dict[str, str], set[str]]:
    """Per-prompt ratings from a cache alone: each prompt's most recent output and judge."""
    by_prompt: dict[str, list[Judgment]] = {}
    for r in records:
        if r.get("kind") != "absolute" or (judge is not None and r.get("judge") != judge):
            continue
        if r.get("version") == prompts.ABSOLUTE_DIALOGUE_VERSION:  # a dialogue's turns: `evaluate.dialogue` reports them
            continue
        if not isinstance(r.get("prompt_id"), str):
            raise LimaError(f"an absolute judgment without a prompt id: key {r.get('key')!r}")
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    results: dict[str, str] = {}
    judges: set[str] = set()
    for pid, rs in by_prompt.items():
        current = rs[-1]["key"]  # the key holds the output hash, judge and prompt version
        judges.add(str(rs[-1].get("judge")))
        matching = [r for r in rs if r["key"] == current]
        results[pid] = outcome(next((r for r in reversed(matching) if succeeded(r)), matching[-1]))
    return results, judges
