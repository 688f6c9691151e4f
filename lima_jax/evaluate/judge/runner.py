"""Asking the judge what the cache lacks: tasks run `workers` at a time, each judgment appended to the
cache as it comes, the run stopped early after too many failures (a judge that fails everything
should stop the run, not fail once per prompt).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Sequence

from lima_jax.errors import LimaError
from lima_jax.evaluate.answers.records import text_hash
from lima_jax.evaluate.judge.cache import Judgment, JudgmentCache, judgment_key, outcome, succeeded
from lima_jax.evaluate.judge.protocol import Judge, JudgeFailure


@dataclasses.dataclass
class Task:
    key: str
    messages: list[dict[str, str]]
    choices: Sequence[str]
    fields: dict[str, Any]  # recorded with the judgment (prompt id, order, output hashes, ...)


@dataclasses.dataclass
class RunStats:
    asked: int = 0
    failed: int = 0
    stopped: bool = False  # max_failures reached: some tasks were not asked


def _judge_one(judge: Judge, task: Task) -> Judgment:
    record: Judgment = {"key": task.key, **task.fields, "judge": judge.name}
    try:
        choice, raw = judge.verdict(task.messages, task.choices)
        if choice not in task.choices:  # a judge bug must not become a verdict
            raise JudgeFailure(f"the judge returned {choice!r}, not one of {list(task.choices)}", raw=raw)
        record.update(verdict=choice, raw=raw, error=None)
    except JudgeFailure as e:
        record.update(verdict=None, raw=e.raw, error=str(e))
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record


def judge_each(responses: dict[str, dict[str, Any]], judge: Judge, cache: JudgmentCache, *, kind: str, version: str,
               choices: Sequence[str], messages: Callable[[list[str], str], list[dict[str, str]]],
               fields: Callable[[dict[str, Any]], dict[str, Any]] = lambda record: {}, workers: int = 1,
               max_failures: int | None = None, progress: bool = True) -> tuple[dict[str, str], RunStats]:
    """Asks `judge` about every response (id -> a response record) the cache has no verdict for, keyed by
    kind, prompt version, judge, response id and the output's hash, so an edited output is asked again;
    returns each response's `outcome` and the run's stats. `fields(record)` adds to what is recorded."""
    keys: dict[str, str] = {}
    tasks: list[Task] = []
    for rid, r in responses.items():
        output_hash = text_hash(r["output"])
        keys[rid] = key = judgment_key(kind, version, judge.name, rid, output_hash)
        if not cache.done(key):
            recorded = {"kind": kind, "version": version, "prompt_id": rid, **fields(r), "output_hash": output_hash,
                        "generator": r["generator"]}
            tasks.append(Task(key, messages(r["prompt"], r["output"]), choices, recorded))
    stats = run_tasks(tasks, judge, cache, workers=workers, max_failures=max_failures, progress=progress)
    return {rid: outcome(cache.get(key)) for rid, key in keys.items()}, stats


def run_tasks(tasks: Iterable[Task], judge: Judge, cache: JudgmentCache, workers: int = 1,
              max_failures: int | None = None, progress: bool = True) -> RunStats:
    """Asks `judge` each task, `workers` at a time, appending every judgment to `cache` as it comes.

    After `max_failures` failures no new task is started (those in flight finish): a judge that
    fails everything should stop the run early, not once per prompt.
    """
    tasks = list(tasks)
    stats = RunStats()
    if not tasks:
        return stats
    every = max(1, len(tasks) // 20)
    pending = iter(tasks)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        in_flight: set[Future] = set()
        try:
            while True:
                while len(in_flight) < max(1, workers) and not stats.stopped:
                    task = next(pending, None)
                    if task is None:
                        break
                    in_flight.add(pool.submit(_judge_one, judge, task))
                if not in_flight:
                    break
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                error: BaseException | None = None
                for future in finished:
                    if future.exception() is not None:  # not a JudgeFailure: a bug or a bad key stops the run
                        error = error or future.exception()
                        continue
                    record = future.result()
                    cache.append(record)
                    stats.asked += 1
                    if not succeeded(record):
                        stats.failed += 1
                        print(f"judgment failed: {record['error']}", file=sys.stderr)
                        if max_failures is not None and stats.failed >= max_failures:
                            stats.stopped = True
                    if progress and (stats.asked % every == 0 or stats.asked == len(tasks)):
                        print(f"judged {stats.asked}/{len(tasks)} ({stats.failed} failed)", file=sys.stderr, flush=True)
                if error is not None:  # raised after the finished judgments are saved: they cost money
                    raise error
        finally:
            for future in in_flight:
                future.cancel()
    return stats


def check_max_failures(max_failures: int, name: str = "max_failures") -> int | None:
    """The run's failure budget: None (never stop) for 0. `name`: the setting's name in the error."""
    if max_failures < 0:
        raise LimaError(f"{name}={max_failures}: must be 0 (never stop) or more")
    return max_failures or None


def stop_message(stats: RunStats, max_failures: int | None, name: str = "max_failures") -> str:
    return (f"stopped after {stats.failed} failed judgments ({name}={max_failures}); "
            "the cache keeps what was judged: rerun to retry the failures and judge the rest")
