"""The judgment cache, and reading a protocol's results back from it.

The cache is JSONL, one judgment per line, appended and flushed as each answer arrives, so an
interrupted run loses at most the judgments in flight. A line records the key, the judge, the
verdict (null for a failure), the raw judge output and the error. Reading keeps, per key, the
last successful judgment, else the last failure; only keys with a verdict count as done, so a
rerun asks the missing and the failed ones and nothing else.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import threading
from typing import Any, Callable, Hashable, Iterable

from lima_jax.data.records import incomplete_tail, repair_tail
from lima_jax.errors import LimaError
from lima_jax.storage.paths import Appender, Path

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


def read_cache(path: str) -> JudgmentCache:
    """An existing cache (the report reads caches, it never starts one)."""
    if not Path(path).is_file():
        raise LimaError(f"{path}: no such file")
    return JudgmentCache(path)


@dataclasses.dataclass(frozen=True)
class Reading:
    """How one protocol's judgments are read back from a cache: those of `kind` (less `skip`), grouped
    by prompt; of a prompt's judgments those with its latest `version` count, one per `slot` (the last
    success, else the last failure), and `result(prompt id, {slot: judgment or None})` is its result."""

    kind: str
    unnamed: str  # the error for a judgment without a prompt id (or slot)
    result: Callable[[str, dict[str, Judgment | None]], Any]
    version: Callable[[Judgment], Hashable] = lambda r: r["key"]  # the key holds the output hash, judge, prompt version
    slot: Callable[[Judgment], Any] = lambda r: ""
    slots: tuple[str, ...] = ("",)
    skip: Callable[[Judgment], bool] = lambda r: False


def results_from_records(reading: Reading, records: Iterable[Judgment],
                         judge: str | None = None) -> tuple[dict[str, Any], set[str]]:
    """Per prompt, its result from a cache alone (for the report), and the judges they come from. A
    prompt's outputs may have been judged more than once (a regenerated answer, a new judge): each
    prompt uses the outputs, judge and prompt version of its most recent judgment."""
    by_prompt: dict[str, list[Judgment]] = {}
    for r in records:
        if r.get("kind") != reading.kind or (judge is not None and r.get("judge") != judge) or reading.skip(r):
            continue
        if not isinstance(r.get("prompt_id"), str) or reading.slot(r) not in reading.slots:
            raise LimaError(f"{reading.unnamed}: key {r.get('key')!r}")
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    results: dict[str, Any] = {}
    judges: set[str] = set()
    for pid, rs in by_prompt.items():
        current = reading.version(rs[-1])
        judges.add(str(rs[-1].get("judge")))
        best: dict[str, Judgment] = {}
        for r in rs:
            if reading.version(r) == current and (succeeded(r) or not succeeded(best.get(reading.slot(r)))):
                best[reading.slot(r)] = r
        results[pid] = reading.result(pid, {s: best.get(s) for s in reading.slots})
    return results, judges
