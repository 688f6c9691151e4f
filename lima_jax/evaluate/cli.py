"""What the evaluate commands share, on the command side: the judge flags, read into library calls once
their combinations are checked (so that the errors name the flags), the end of a judging command, and
the parsing of flag values. Imported by commands only; its flags exist once a command calls
`define_judge_flags`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

from absl import flags

from lima_jax.errors import LimaError
from lima_jax.evaluate.judge.cache import JudgmentCache
from lima_jax.evaluate.judge.factory import make_judge
from lima_jax.evaluate.judge.prompts import VERDICT_LINE, AnswerFormat
from lima_jax.evaluate.judge.protocol import Judge
from lima_jax.evaluate.judge.runner import RunStats, check_max_failures, stop_message
from lima_jax.storage.paths import Path, check_writable, is_cloud, user_path, write_atomically

MAX_FAILURES = "--max_failures"  # how the errors name the failure budget


@dataclasses.dataclass(frozen=True)
class JudgeFlags:
    """The judging commands' shared flags (pairwise, absolute, likert, dialogue, select)."""

    holders: dict[str, flags.FlagHolder]

    def __getattr__(self, name: str) -> flags.FlagHolder:
        try:
            return self.holders[name]
        except KeyError:
            raise AttributeError(name) from None

    def check(self) -> None:
        """The flags' combinations, each error naming its flags (`make_judge` checks the values again
        for callers without flags)."""
        v = {name: holder.value for name, holder in self.holders.items()}
        if v["workers"] < 1:
            raise LimaError(f"--workers={v['workers']}: must be at least 1")
        if v["judge_checkpoint"] and v["judge_url"]:
            raise LimaError("give --judge_checkpoint or --judge_url, not both")
        if not v["judge_checkpoint"] and not (v["judge_url"] and v["judge_model"]):
            raise LimaError("--judge_url and --judge_model (or --judge_checkpoint) are required")

    def judge(self, answer: AnswerFormat = VERDICT_LINE) -> Judge:
        """The judge the flags name, reading its choice from answers in the `answer` format."""
        self.check()
        v = {name: holder.value for name, holder in self.holders.items()}
        return make_judge(judge_checkpoint=v["judge_checkpoint"], judge_url=v["judge_url"], judge_model=v["judge_model"],
                          workers=v["workers"], answer=answer, api_key_env=v["api_key_env"], timeout_s=v["timeout_s"],
                          max_retries=v["max_retries"], backoff_s=v["backoff_s"], temperature=v["judge_temperature"],
                          max_backoff_s=v["max_backoff_s"], max_tokens=v["judge_max_tokens"])

    def cache(self, default: str | None = None) -> JudgmentCache:
        """The --cache (or `default`) opened; a missing folder or bucket is found before the first judgment."""
        path = self.holders["cache"].value or default
        if not path:
            raise LimaError("--cache is required (a JSONL file; it is created if absent)")
        if is_cloud(path):  # judgments cost money: find a missing bucket before the first one
            check_writable(Path(path).parent, f"--cache={path}: its folder")
        elif not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise LimaError(f"--cache={path}: its directory does not exist")
        return JudgmentCache(path)

    def max_failures(self) -> int | None:
        """The run's failure budget: None (never stop) for 0."""
        return check_max_failures(self.holders["max_failures"].value, MAX_FAILURES)


def define_judge_flags() -> JudgeFlags:
    """Called at import by each judging command (the one way commands define flags: see lima_jax/cli.py)."""
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


def finish(summary: dict, stats: RunStats, out: str | None, details: Any, unit: str, max_failures: int | None) -> None:
    """The end of a judging command: the summary as a JSON line, the details to `out` if given, an
    error if the run stopped early, and a warning naming how many `unit`s failed."""
    print(json.dumps(summary), flush=True)
    if out:  # written so that a reader never sees half a file
        write_atomically(out, json.dumps({"summary": summary, unit + "s": details}, ensure_ascii=False, indent=1) + "\n")
    if stats.stopped:
        raise LimaError(stop_message(stats, max_failures or 0, MAX_FAILURES))
    if summary["failed"]:
        print(f"failed judgments for {summary['failed']} of {summary[unit + 's']} {unit}s (not counted); "
              "rerun to retry them", file=sys.stderr)


def parse_pairwise_flag(value: str, flag: str = "pairwise") -> list[tuple[str | None, str]]:
    """`name=path,name=path` (or bare paths, named after the generator the cache recorded)."""
    entries = []
    for item in filter(None, (s.strip() for s in value.split(","))):
        name, sep, path = item.partition("=")
        entries.append((name.strip(), path.strip()) if sep else (None, item))
    for name, path in entries:
        if not path or (name is not None and not name):
            raise LimaError(f"--{flag}: {value!r} should be NAME=PATH[,NAME=PATH...]")
    return entries


def parse_checkpoints(given: list[str]) -> list[tuple[str, str]]:
    """(name, path) per `[NAME=]PATH`; a bare path is named after its folder. Names must differ."""
    out: list[tuple[str, str]] = []
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or "://" in name:  # gs://bucket/run is a path, not NAME=...
            name, path = user_path(item).name, item
        name, path = name.strip(), path.strip()
        if not name or not path or "/" in name:
            raise LimaError(f"--checkpoint: {item!r} should be [NAME=]PATH (a NAME without '/')")
        if name in dict(out):
            raise LimaError(f"--checkpoint: two checkpoints named {name!r}; name them: NAME=PATH")
        out.append((name, path))
    return out


def parse_epochs(spec: str) -> tuple[int, int]:
    """`--epochs=LO-HI` (or one epoch) as (LO, HI); every epoch when empty."""
    if not spec:
        return 0, 10**9
    lo, _, hi = spec.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise LimaError(f"--epochs={spec!r}: expected a range such as 5-10") from None
