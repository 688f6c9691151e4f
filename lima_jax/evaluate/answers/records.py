"""The response file that generation writes and judging reads: JSONL, one object per line,

    {"id": "9c1d...", "prompt": ["a user turn", ...], "output": "the model's answer", "generator": "lima-65b"}

`prompt` holds the conversation up to and including the last user turn (an odd number of turns,
user first). `id` is optional on input: without one it is `prompt_id(prompt)`, a hash of the turns,
so two systems answering the same prompts pair up by id with no shared bookkeeping. `generator`
is optional too (default: the file's name without its suffix).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Sequence

from lima_jax.data.records import BadLine, json_object, read_jsonl
from lima_jax.errors import LimaError
from lima_jax.storage.paths import Path, PathLike

Record = dict[str, Any]


def digest(value: Any) -> str:
    blob = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def prompt_id(turns: Sequence[str]) -> str:
    """A stable id for a prompt: the same turns give the same id in every file and on every run."""
    return digest(list(turns))


def text_hash(text: str) -> str:
    """Identifies an output in judgment keys, so a regenerated answer is judged again."""
    return digest(text)


def make_record(prompt: Sequence[str], output: str, generator: str, id: str | None = None) -> Record:
    turns = list(prompt)
    return {"id": id or prompt_id(turns), "prompt": turns, "output": output, "generator": generator}


def file_head(path: str) -> bytes:
    """The start of the file's text after any blank space (empty for no file): enough to tell formats apart."""
    p = Path(path)
    if not p.is_file():
        return b""
    with p.open("rb") as f:
        return f.read(65536).lstrip()


def first_object(head: bytes) -> dict:
    """The JSON object on the first line of `head`, or {} when there is none."""
    try:
        value = json.loads(head.split(b"\n", 1)[0].decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def write_responses(path: PathLike, records: Iterable[Record]) -> None:
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def parse_record(text: str, default_generator: str) -> Record:
    obj = json_object(text)
    if "question_id" in obj and "choices" in obj and "prompt" not in obj:
        raise BadLine("an MT-Bench answer, which holds no question text: pass --mt_bench_questions=question.jsonl")
    for field in ("prompt", "output"):
        if field not in obj:
            raise BadLine(f"missing {field!r}")
    prompt = obj["prompt"]
    if isinstance(prompt, str):  # a single user turn, written as a plain string
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(t, str) for t in prompt):
        raise BadLine("'prompt' must be a non-empty list of strings (the turns)")
    if len(prompt) % 2 == 0:
        raise BadLine(f"'prompt' has {len(prompt)} turns; it must end with a user turn (an odd number)")
    if not isinstance(obj["output"], str):
        raise BadLine("'output' must be a string")
    rid = obj.get("id")
    if rid is not None and (not isinstance(rid, str) or not rid):
        raise BadLine("'id' must be a non-empty string")
    generator = obj.get("generator", default_generator)
    if not isinstance(generator, str):
        raise BadLine("'generator' must be a string")
    return make_record(prompt, obj["output"], generator, rid)


def read_response_jsonl(path: str | os.PathLike) -> dict[str, Record]:
    """Reads a JSONL response file into {id: record}, in file order; a bad line raises `file:line: why`.
    `formats.read_responses` reads the other tools' files too."""
    name = os.fspath(path)
    default_generator = Path(name).stem
    records: dict[str, Record] = {}
    first_line: dict[str, int] = {}
    parsed, _ = read_jsonl(name, lambda text: parse_record(text, default_generator))
    for lineno, record in parsed:
        rid = record["id"]
        if rid in records:  # two answers to one prompt cannot be paired with another file
            raise LimaError(f"{name}:{lineno}: id {rid!r} already appears on line {first_line[rid]}")
        records[rid] = record
        first_line[rid] = lineno
    if not records:
        raise LimaError(f"{name}: no responses")
    return records
