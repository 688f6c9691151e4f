"""What pairwise and absolute judging share: the on-disk judgment cache, the loop that asks the
judge what the cache lacks, and the judge flags the judging commands define.

The cache is JSONL, one judgment per line, appended and flushed as each answer arrives, so an
interrupted run loses at most the judgments in flight. A line records the key, the judge, the
verdict (null for a failure), the raw judge output and the error. Reading keeps, per key, the
last successful judgment, else the last failure; only keys with a verdict count as done, so a
rerun asks the missing and the failed ones and nothing else.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Sequence

from absl import flags

from lima_jax.data.records import incomplete_tail, repair_tail
from lima_jax.errors import LimaError
from lima_jax.evaluate.judges import Judge, JudgeFailure, OpenAIJudge
from lima_jax.evaluate.prompts import VERDICT_LINE, AnswerFormat
from lima_jax.evaluate.responses import text_hash
from lima_jax.storage.paths import Appender, Path, check_writable, is_cloud, write_atomically

Judgment = dict[str, Any]


def judgment_key(*parts: str) -> str:
    return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


def succeeded(judgment: Judgment | None) -> bool:
    return judgment is not None and judgment.get("verdict") is not None


class JudgmentCache:
    """The judgments in a JSONL file (local or gs://), plus those appended while it is open (thread-safe)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.records: list[Judgment] = []
        self._best: dict[str, Judgment] = {}
        self._lock = threading.Lock()
        self._repair = False  # an incomplete last line is cut off before the first append
        self._out: Appender | None = None  # opened at the first append
        if Path(self.path).exists():
            self._load()

    def _load(self) -> None:
        data = Path(self.path).read_bytes()
        self._repair = bool(data) and not data.endswith(b"\n")
        tail = incomplete_tail(data)
        if tail == 0:  # a partial line is repaired only after judgments: this file is something else
            raise LimaError(f"{self.path}:1: not JSON; it is not a judgment cache: name another file "
                            "(or delete it, if a killed run left it)")
        if tail is not None:
            # A run killed mid-write leaves a partial last line: the next append cuts it off.
            lineno = data.count(b"\n") + 1
            print(f"{self.path}:{lineno}: ignoring an incomplete last line", file=sys.stderr)
            data = data[:tail]
        for i, raw in enumerate(data.split(b"\n")):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                if not isinstance(record, dict) or not isinstance(record.get("key"), str):
                    raise ValueError("not a judgment (a JSON object with a 'key')")
            except (ValueError, UnicodeDecodeError) as e:
                raise LimaError(f"{self.path}:{i + 1}: {e}") from None
            self._add(record)

    def _add(self, record: Judgment) -> None:
        self.records.append(record)
        key = record["key"]
        if succeeded(record) or not succeeded(self._best.get(key)):
            self._best[key] = record

    def get(self, key: str) -> Judgment | None:
        """The judgment for `key`: the last success, else the last failure, else None."""
        return self._best.get(key)

    def done(self, key: str) -> bool:
        return succeeded(self._best.get(key))

    def append(self, record: Judgment) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if self._out is None:
                if self._repair:
                    repair_tail(self.path)
                self._out = Appender(self.path)
            self._out.write(line)
            self._out.flush()
            self._add(record)


def outcome(judgment: Judgment | None) -> str:
    """A judgment's verdict, "failed" for one with no verdict, "missing" for none at all."""
    if judgment is None:
        return "missing"
    return judgment["verdict"] if succeeded(judgment) else "failed"


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
    stopped: bool = False  # --max_failures reached: some tasks were not asked


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


@dataclasses.dataclass
class Judged:
    """A judging command's outcome: its summary (judge, generator, counts, how many asked), each
    response's verdict ("failed" or "missing" where none) and the run's stats."""

    summary: dict[str, Any]
    results: dict[str, str]
    stats: RunStats

    @classmethod
    def of(cls, responses: dict[str, dict[str, Any]], judge: Judge, results: dict[str, str], stats: RunStats,
           counts: dict[str, Any]) -> "Judged":
        first = next(iter(responses.values()))
        return cls({"judge": judge.name, "generator": first["generator"], **counts, "asked": stats.asked}, results, stats)


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


def percent(count: int, total: int) -> float:
    return round(100.0 * count / total, 1) if total else 0.0


def stop_message(stats: RunStats, max_failures: int | None) -> str:
    return (f"stopped after {stats.failed} failed judgments (--max_failures={max_failures}); "
            "the cache keeps what was judged: rerun to retry the failures and judge the rest")


def finish(summary: dict, stats: RunStats, out: str | None, details: Any, unit: str, total_key: str,
           max_failures: int | None) -> None:
    """The end of a judging command: the summary as a JSON line, the details to `out` if given, a
    LimaError if the run stopped early, and a warning naming how many `unit`s failed."""
    print(json.dumps(summary), flush=True)
    if out:
        write_json(out, {"summary": summary, unit + "s": details})
    if stats.stopped:
        raise LimaError(stop_message(stats, max_failures or 0))
    if summary["failed"]:
        print(f"failed judgments for {summary['failed']} of {summary[total_key]} {unit}s (not counted); "
              "rerun to retry them", file=sys.stderr)


def make_judge(*, judge_checkpoint: str | None, judge_url: str | None, judge_model: str | None, workers: int = 1,
               answer: AnswerFormat = VERDICT_LINE, **client: Any) -> Judge:
    """A local-checkpoint judge or an OpenAI-compatible one (`client`: OpenAIJudge's keyword arguments)
    that reads its choice from answers in the `answer` format."""
    if workers < 1:
        raise LimaError(f"--workers={workers}: must be at least 1")
    if judge_checkpoint:
        if judge_url:
            raise LimaError("give --judge_checkpoint or --judge_url, not both")
        from lima_jax.evaluate.local_judge import LocalJudge  # loads JAX only for a local judge

        return LocalJudge(judge_checkpoint, answer_prefix=answer.prefix)
    if not judge_url or not judge_model:
        raise LimaError("--judge_url and --judge_model (or --judge_checkpoint) are required")
    return OpenAIJudge(judge_url, judge_model, parser=answer.parse, **client)


def with_answer_format(judge: Judge, answer: AnswerFormat) -> Judge:
    """The same judge reading answers in another format (a local judge's weights are shared, not
    loaded again): `evaluate.select` asks one judge both pairwise and Likert prompts."""
    other = copy.copy(judge)
    if isinstance(other, OpenAIJudge):
        other.parser = answer.parse
    elif hasattr(other, "answer_prefix"):  # LocalJudge, whose module imports JAX
        other.answer_prefix = answer.prefix
    else:
        raise LimaError(f"judge {judge.name}: cannot change the format of its answers")
    return other


def open_cache(path: str | None) -> JudgmentCache:
    if not path:
        raise LimaError("--cache is required (a JSONL file; it is created if absent)")
    if is_cloud(path):  # judgments cost money: find a missing bucket before the first one
        check_writable(Path(path).parent, f"--cache={path}: its folder")
    elif not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise LimaError(f"--cache={path}: its directory does not exist")
    return JudgmentCache(path)


def check_max_failures(max_failures: int) -> int | None:
    """The run's failure budget: None (never stop) for 0."""
    if max_failures < 0:
        raise LimaError(f"--max_failures={max_failures}: must be 0 (never stop) or more")
    return max_failures or None


@dataclasses.dataclass(frozen=True)
class JudgeFlags:
    """The judging commands' shared flags (pairwise, absolute, likert, select), read into library calls."""

    holders: dict[str, flags.FlagHolder]

    def __getattr__(self, name: str) -> flags.FlagHolder:
        try:
            return self.holders[name]
        except KeyError:
            raise AttributeError(name) from None

    def judge(self, answer: AnswerFormat = VERDICT_LINE) -> Judge:
        v = {name: holder.value for name, holder in self.holders.items()}
        return make_judge(judge_checkpoint=v["judge_checkpoint"], judge_url=v["judge_url"], judge_model=v["judge_model"],
                          workers=v["workers"], answer=answer, api_key_env=v["api_key_env"], timeout_s=v["timeout_s"],
                          max_retries=v["max_retries"], backoff_s=v["backoff_s"], temperature=v["judge_temperature"],
                          max_backoff_s=v["max_backoff_s"], max_tokens=v["judge_max_tokens"])

    def cache(self) -> JudgmentCache:
        return open_cache(self.holders["cache"].value)

    def max_failures(self) -> int | None:
        return check_max_failures(self.holders["max_failures"].value)


def define_judge_flags() -> JudgeFlags:
    """Called at import by each judging command (the one way commands define flags: see cli.py)."""
    d = flags
    return JudgeFlags({h.name: h for h in (
        d.DEFINE_string("judge_checkpoint", None, "a lima_jax checkpoint as the judge (verdicts from answer log-probabilities), instead of --judge_url"),
        d.DEFINE_string("judge_url", None, "an OpenAI-compatible API base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 (vLLM)"),
        d.DEFINE_string("judge_model", None, "the judge model name, e.g. gpt-4"),
        d.DEFINE_string("api_key_env", "OPENAI_API_KEY", "environment variable holding the API key (may be unset for a local server)"),
        d.DEFINE_string("cache", None, "JSONL of judgments: read to skip what is done, appended as judgments arrive"),
        d.DEFINE_string("out", None, "also write the summary and per-prompt results to this JSON file"),
        d.DEFINE_float("timeout_s", 120.0, "seconds to wait for one judge answer"),
        d.DEFINE_integer("max_retries", 5, "retries per judgment (timeouts, connection errors, 429, 5xx, no readable verdict)"),
        d.DEFINE_float("backoff_s", 2.0, "first retry delay; doubles on each retry"),
        d.DEFINE_float("max_backoff_s", 60.0, "longest retry delay, also the cap on a server's Retry-After"),
        d.DEFINE_float("judge_temperature", 0.0, "the judge's sampling temperature"),
        d.DEFINE_integer("judge_max_tokens", None, "cap on the judge's answer length (default: the service's)"),
        d.DEFINE_integer("workers", 4, "judgments asked concurrently"),
        d.DEFINE_integer("max_failures", 20, "stop starting new judgments after this many fail in one run (0: never stop)"),
    )})


def write_json(path: str, value: Any) -> None:
    """Written so that a reader never sees half a file."""
    write_atomically(path, json.dumps(value, ensure_ascii=False, indent=1) + "\n")
