r"""Absolute rating, as in LIMA's analysis: is each response Fail, Pass or Excellent? Fail: the response
does not meet the request's requirements; Pass: it meets them; Excellent: it meets them and is
excellent. A failed judgment is counted as failed, not as any rating, and asked again on the next run.
"""
from __future__ import annotations

import functools
from typing import Callable

from lima_jax.errors import LimaError
from lima_jax.evaluate import stats
from lima_jax.evaluate.answers.records import Record
from lima_jax.evaluate.judge import prompts
from lima_jax.evaluate.judge.cache import JudgmentCache, Reading, outcome, read_cache, results_from_records as read_results
from lima_jax.evaluate.judge.protocol import Judge, Messages
from lima_jax.evaluate.judge.runner import judge_each
from lima_jax.evaluate.protocols.results import Judged, check_one_judge, summarize

RATINGS = prompts.ABSOLUTE_CHOICES


def judge_absolute(responses: dict[str, Record], judge: Judge, cache: JudgmentCache, workers: int = 1,
                   max_failures: int | None = None, progress: bool = True, version: str = prompts.ABSOLUTE_VERSION,
                   messages: Callable[[list[str], str], Messages] = prompts.absolute_messages) -> Judged:
    """Rates every response the cache has no verdict for; `messages` asks the judge (the prompt of
    `version`: a dialogue's turns are asked with `prompts.dialogue_absolute_messages`)."""
    results, run = judge_each(responses, judge, cache, kind="absolute", version=version, choices=RATINGS,
                              messages=messages, workers=workers, max_failures=max_failures, progress=progress)
    return Judged.of(responses, judge, results, run, summarize(list(results.values()), RATINGS, "responses", "rated"))


# From a cache alone, per prompt: its rating, from its most recent output and judge. A dialogue's turns
# are left to `evaluate.dialogue`, which reports them.
results_from_records = functools.partial(read_results, Reading(
    "absolute", "an absolute judgment without a prompt id", lambda pid, slots: outcome(slots[""]),
    skip=lambda r: r.get("version") == prompts.ABSOLUTE_DIALOGUE_VERSION))


def absolute_distribution(name: str, path: str, judge: str | None = None, samples: int = 1000,
                          seed: int = 0) -> stats.Distribution:
    """The report's absolute ratings from a cache."""
    results, judges = results_from_records(read_cache(path).records, judge)
    if not results:
        raise LimaError(f"{path}: no absolute judgments" + (f" by {judge}" if judge else ""))
    check_one_judge(path, judges)
    return stats.distribution(name, results, RATINGS, judges, samples, seed)
