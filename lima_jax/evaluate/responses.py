"""The response file that generation writes and judging reads, and the generation that writes it.

JSONL, one object per line:

    {"id": "9c1d...", "prompt": ["a user turn", ...], "output": "the model's answer", "generator": "lima-65b"}

`prompt` holds the conversation up to and including the last user turn (an odd number of turns,
user first). `id` is optional on input: without one it is `prompt_id(prompt)`, a hash of the turns,
so two systems answering the same prompts pair up by id with no shared bookkeeping. `generator`
is optional too (default: the file's name without its suffix).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, Callable, Iterable, Sequence

from lima_jax.inference import hosts
from lima_jax.data.records import BadLine, check_appendable, json_object, read_jsonl, repair_tail
from lima_jax.errors import LimaError
from lima_jax.storage.paths import Appender, Path, PathLike

Record = dict[str, Any]


def _digest(value: Any) -> str:
    blob = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def prompt_id(turns: Sequence[str]) -> str:
    """A stable id for a prompt: the same turns give the same id in every file and on every run."""
    return _digest(list(turns))


def text_hash(text: str) -> str:
    """Identifies an output in judgment keys, so a regenerated answer is judged again."""
    return _digest(text)


def make_record(prompt: Sequence[str], output: str, generator: str, id: str | None = None) -> Record:
    turns = list(prompt)
    return {"id": id or prompt_id(turns), "prompt": turns, "output": output, "generator": generator}


def write_responses(path: PathLike, records: Iterable[Record]) -> None:
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _parse(text: str, default_generator: str) -> Record:
    obj = json_object(text)
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


def read_responses(path: str | os.PathLike) -> dict[str, Record]:
    """Reads a response file into {id: record}, in file order; a bad line raises `file:line: why`."""
    name = os.fspath(path)
    default_generator = Path(name).stem
    records: dict[str, Record] = {}
    first_line: dict[str, int] = {}
    parsed, _ = read_jsonl(name, lambda text: _parse(text, default_generator))
    for lineno, record in parsed:
        rid = record["id"]
        if rid in records:  # two answers to one prompt cannot be paired with another file
            raise LimaError(f"{name}:{lineno}: id {rid!r} already appears on line {first_line[rid]}")
        records[rid] = record
        first_line[rid] = lineno
    if not records:
        raise LimaError(f"{name}: no responses")
    return records


def generate_responses(generator: Any, prompts: list[list[str]], output: Path, name: str,
                       params, seed: int, batch_size: int,
                       progress: Callable[[str], None] = lambda line: None) -> int:
    """Answers the prompts the output file lacks with `generator` (an `inference.Generator`), appending
    each batch as it is done; returns how many were generated now.

    On several processes (a generator on a mesh over a slice) every process takes part in each batch;
    process 0 alone reads and writes the output file and tells the others which prompts remain."""
    unique = [list(t) for t in dict.fromkeys(map(tuple, prompts))]
    hosts.check_same("the prompts", unique)

    def remaining() -> list[int]:
        check_appendable(output, lambda text: _parse(text, name), "a response file")
        repair_tail(output)
        done = set(read_responses(output)) if output.exists() else set()
        output.parent.mkdir(parents=True, exist_ok=True)
        return [i for i, turns in enumerate(unique) if prompt_id(turns) not in done]

    todo = [unique[i] for i in hosts.from_process_0(remaining)]
    with Appender(output) if hosts.is_writer() else contextlib.nullcontext() as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            # A prompt's randomness is its own (inference.sampler.prompt_seed): a resumed run samples
            # every remaining prompt as the uninterrupted run would have, and as `sample` does.
            ids = generator([generator.encode(t) for t in batch], params, seed)
            if f is not None:
                for turns, out in zip(batch, ids):
                    f.write(json.dumps(make_record(turns, generator.decode(out), name), ensure_ascii=False) + "\n")
                f.flush()
            progress(f"{min(start + batch_size, len(todo))}/{len(todo)} prompts answered")
    return len(todo)
