"""What the judging protocols share: the result of a judging run, and its summary (counts per verdict
of what was judged; failed and missing judgments counted apart, never as a verdict).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from lima_jax.errors import LimaError
from lima_jax.evaluate.judge.protocol import Judge
from lima_jax.evaluate.judge.runner import RunStats

OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}  # a pairwise outcome (or human label), from our side


@dataclasses.dataclass
class Judged:
    """A judging run's outcome: its summary (the judge, the generators, the counts, how many were asked
    now), each prompt's or response's result ("failed" or "missing" where no verdict) and the run's stats."""

    summary: dict[str, Any]
    results: dict[str, Any]
    stats: RunStats

    @classmethod
    def of(cls, responses: dict[str, dict[str, Any]], judge: Judge, results: dict[str, str], stats: RunStats,
           counts: dict[str, Any]) -> "Judged":
        """The result of judging each response on its own (absolute, Likert)."""
        first = next(iter(responses.values()))
        return cls({"judge": judge.name, "generator": first["generator"], **counts, "asked": stats.asked}, results, stats)


def percent(count: int, total: int) -> float:
    return round(100.0 * count / total, 1) if total else 0.0


def summarize(outcomes: Sequence[str], categories: Sequence[str], unit: str, judged: str, *,
              head: dict[str, Any] | None = None, percentages: bool = True) -> dict[str, Any]:
    """{unit: all, judged: those with a verdict, **head, each category's count (and percentage of the
    judged), failed, missing}."""
    counts = {k: sum(1 for o in outcomes if o == k) for k in (*categories, "failed", "missing")}
    total = sum(counts[k] for k in categories)
    summary: dict[str, Any] = {unit: len(outcomes), judged: total, **(head or {})}
    summary.update({k: counts[k] for k in categories})
    if percentages:
        summary.update({f"{k}_pct": percent(counts[k], total) for k in categories})
    summary.update(failed=counts["failed"], missing=counts["missing"])
    return summary


def check_one_judge(path: str, judges: set[str]) -> None:
    if len(judges) > 1:
        raise LimaError(f"{path} holds judgments from several judges ({', '.join(sorted(judges))}); "
                        "pick one with --judge_model")
