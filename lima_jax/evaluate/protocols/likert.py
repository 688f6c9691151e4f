r"""Likert helpfulness scores, as in LIMA's ablations (§5, Appendix D): each response rated 1-6 by a
judge asked with the paper's template verbatim (`prompts.LIKERT_TEMPLATE`), the score read from the
answer's last non-empty line (`prompts.parse_likert`). An unreadable answer is asked again, then
recorded as a failure, counted apart and never given a score. An arm's mean has a 95% interval that
resamples prompts (`stats.mean_interval`: the samples of one prompt move together).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Any, Iterable, Sequence

from lima_jax.errors import LimaError
from lima_jax.evaluate import stats
from lima_jax.evaluate.answers.records import Record, prompt_id
from lima_jax.evaluate.judge import prompts
from lima_jax.evaluate.judge.cache import (Judgment, JudgmentCache, Reading, judgment_key, outcome, read_cache,
                                          results_from_records as read_results)
from lima_jax.evaluate.judge.protocol import Judge
from lima_jax.evaluate.judge.runner import judge_each
from lima_jax.evaluate.protocols.results import Judged, check_one_judge, summarize
from lima_jax.storage.paths import Path

SCORES = prompts.LIKERT_CHOICES


KIND = "likert"


def score_key(judge: str, response_id: str, output_hash: str) -> str:
    return judgment_key(KIND, prompts.LIKERT_VERSION, judge, response_id, output_hash)


def judge_likert(responses: dict[str, Record], judge: Judge, cache: JudgmentCache, workers: int = 1,
                 max_failures: int | None = None, progress: bool = True) -> Judged:
    """Scores every response the cache has no verdict for. `judge` must read answers in the
    `prompts.LIKERT_LINE` format (`judge.factory.make_judge(..., answer=LIKERT_LINE)`)."""
    # prompt_hash: which responses answer the same prompt (the bootstrap's unit), whatever their ids.
    results, run = judge_each(responses, judge, cache, kind=KIND, version=prompts.LIKERT_VERSION, choices=SCORES,
                              messages=prompts.likert_messages, fields=lambda r: {"prompt_hash": prompt_id(r["prompt"])},
                              workers=workers, max_failures=max_failures, progress=progress)
    scored = [int(v) for v in results.values() if v in SCORES]
    mean = round(statistics.fmean(scored), 3) if scored else None  # of the scored responses only
    return Judged.of(responses, judge, results, run, summarize(list(results.values()), SCORES, "responses", "scored",
                                                               head={"mean": mean}, percentages=False))


@dataclasses.dataclass(frozen=True)
class Scored:
    """One response's outcome in a cache: its score (or "failed") and the prompt it answers."""

    outcome: str
    prompt: str


# From a cache alone, per response: its outcome and prompt, from its most recent output and judge.
results_from_records = functools.partial(read_results, Reading(
    KIND, "a Likert judgment without a response id",
    lambda rid, slots: Scored(outcome(slots[""]), str(slots[""].get("prompt_hash") or rid))))


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
    mean, lo, hi = stats.mean_interval(by_prompt, samples, seed)
    failures = sum(1 for s in results.values() if s.outcome == "failed")
    return LikertScore(name, mean, lo, hi, sum(map(len, by_prompt.values())), failures, len(by_prompt), sorted(judges))


def likert_arms(entries: Sequence[tuple[str | None, str]], judge: str | None = None, samples: int = 1000,
                seed: int = 0) -> list[LikertScore]:
    """One row per (name, cache) of `--likert`: the mean score, its interval, n and failures. An
    unnamed arm is named after the generator its cache recorded."""
    arms = []
    for name, path in entries:
        records = read_cache(path).records
        arm = likert_score(name or "", records, judge, samples, seed)
        if arm is None:
            raise LimaError(f"{path}: no Likert judgments" + (f" by {judge}" if judge else ""))
        check_one_judge(path, set(arm.judges))
        if not name:
            arm.name = next((str(r["generator"]) for r in reversed(records)
                             if r.get("kind") == KIND and r.get("generator")), Path(path).stem)
        arms.append(arm)
    return arms
