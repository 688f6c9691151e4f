r"""Likert helpfulness scores, as in LIMA's ablations (§5, Appendix D): each response rated 1-6 by a
judge asked with the paper's template verbatim (`prompts.LIKERT_TEMPLATE`), the score read from the
answer's last non-empty line (`prompts.parse_likert`). The library behind
`python -m lima_jax.evaluate.likert`; `evaluate.report --likert` reads the caches it writes.

Judgments are cached and retried like the other kinds (`lima_jax.evaluate.judging`): an unreadable
answer is asked again (`--max_retries`), then recorded as a failure, which is counted apart and
never given a score; a rerun asks the failed and the missing ones only.

The mean's 95% interval is a percentile bootstrap that resamples prompts (the paper's ablations
score several samples per prompt: samples of one prompt move together), seeded so that a report is
reproducible; with one response per prompt it is the ordinary bootstrap of the mean.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Iterable

import numpy as np

from lima_jax.errors import LimaError
from lima_jax.evaluate import audit, judging, prompts
from lima_jax.evaluate.judges import Judge
from lima_jax.evaluate.judging import Judgment, JudgmentCache, outcome, succeeded
from lima_jax.evaluate.responses import Record, prompt_id

SCORES = prompts.LIKERT_CHOICES
KIND = "likert"


def score_key(judge: str, response_id: str, output_hash: str) -> str:
    return judging.judgment_key(KIND, prompts.LIKERT_VERSION, judge, response_id, output_hash)


def summarize(results: dict[str, str]) -> dict[str, Any]:
    """Counts per score, the mean of the scored responses (None if none), failures and missing."""
    scored = [int(v) for v in results.values() if v in SCORES]
    summary: dict[str, Any] = {"responses": len(results), "scored": len(scored),
                               "mean": round(statistics.fmean(scored), 3) if scored else None}
    summary.update({s: sum(1 for v in results.values() if v == s) for s in SCORES})
    summary.update(failed=sum(1 for v in results.values() if v == "failed"),
                   missing=sum(1 for v in results.values() if v == "missing"))
    return summary


LikertResult = judging.Judged


def judge_likert(responses: dict[str, Record], judge: Judge, cache: JudgmentCache, workers: int = 1,
                 max_failures: int | None = None, progress: bool = True) -> LikertResult:
    """Scores every response the cache has no verdict for. `judge` must read answers in the
    `prompts.LIKERT_LINE` format (`judging.make_judge(..., answer=LIKERT_LINE)`)."""
    # prompt_hash: which responses answer the same prompt (the bootstrap's unit), whatever their ids.
    results, stats = judging.judge_each(responses, judge, cache, kind=KIND, version=prompts.LIKERT_VERSION, choices=SCORES,
                                        messages=prompts.likert_messages,
                                        fields=lambda r: {"prompt_hash": prompt_id(r["prompt"])}, workers=workers,
                                        max_failures=max_failures, progress=progress)
    return judging.Judged.of(responses, judge, results, stats, summarize(results))


@dataclasses.dataclass(frozen=True)
class Scored:
    """One response's outcome in a cache: its score (or "failed") and the prompt it answers."""

    outcome: str
    prompt: str


def results_from_records(records: Iterable[Judgment], judge: str | None = None) -> tuple[dict[str, Scored], set[str]]:
    """Per-response outcomes from a cache alone: each response's most recent output and judge."""
    by_response: dict[str, list[Judgment]] = {}
    for r in records:
        if r.get("kind") != KIND or (judge is not None and r.get("judge") != judge):
            continue
        if not isinstance(r.get("prompt_id"), str):
            raise LimaError(f"a Likert judgment without a response id: key {r.get('key')!r}")
        by_response.setdefault(r["prompt_id"], []).append(r)
    results: dict[str, Scored] = {}
    judges: set[str] = set()
    for rid, rs in by_response.items():
        current = rs[-1]["key"]  # the key holds the output hash, the judge and the template version
        judges.add(str(rs[-1].get("judge")))
        matching = [r for r in rs if r["key"] == current]
        chosen = next((r for r in reversed(matching) if succeeded(r)), matching[-1])
        results[rid] = Scored(outcome(chosen), str(chosen.get("prompt_hash") or rid))
    return results, judges


@dataclasses.dataclass
class LikertScore:
    """One arm of the report: the mean score with its 95% interval."""

    name: str
    mean: float  # NaN when nothing was scored
    ci_low: float
    ci_high: float
    n: int  # responses scored
    failures: int  # responses whose judgment failed: not scored, not counted in the mean
    prompts: int  # distinct prompts among the scored responses (the bootstrap's unit)
    judges: list[str]

    def to_json(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 3)  # strict JSON: no NaN

        return {"name": self.name, "mean": num(self.mean), "ci_low": num(self.ci_low), "ci_high": num(self.ci_high),
                "n": self.n, "failures": self.failures, "prompts": self.prompts, "judges": self.judges}


def mean_interval(scores_by_prompt: dict[str, list[int]], samples: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """The mean of all scores and a percentile-bootstrap interval that resamples prompts (each with
    all its scores); NaNs when there are none."""
    groups = [g for g in scores_by_prompt.values() if g]
    if not groups:
        return math.nan, math.nan, math.nan
    sums = np.array([sum(g) for g in groups], np.float64)
    sizes = np.array([len(g) for g in groups], np.float64)
    counts = audit._bootstrap_counts(len(groups), samples, seed)
    lo, hi = audit._percentiles((counts @ sums) / (counts @ sizes), level)
    return float(sums.sum() / sizes.sum()), lo, hi


def likert_score(name: str, records: Iterable[Judgment], judge: str | None = None, samples: int = 1000,
                 seed: int = 0) -> LikertScore | None:
    """The arm's score from its cache's records; None if the cache holds no Likert judgment."""
    results, judges = results_from_records(records, judge)
    if not results:
        return None
    by_prompt: dict[str, list[int]] = {}
    for s in results.values():
        if s.outcome in SCORES:
            by_prompt.setdefault(s.prompt, []).append(int(s.outcome))
    mean, lo, hi = mean_interval(by_prompt, samples, seed)
    failures = sum(1 for s in results.values() if s.outcome == "failed")
    return LikertScore(name, mean, lo, hi, sum(map(len, by_prompt.values())), failures, len(by_prompt), sorted(judges))
