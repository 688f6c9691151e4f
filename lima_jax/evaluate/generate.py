"""Responses from a checkpoint for a prompt set, as the response file judging reads.

    python -m lima_jax.evaluate.generate --checkpoint=runs/lima-65b --prompts=lima/test.jsonl \
        --output=responses/lima-65b.jsonl [--generator=lima-65b] [--batch_size=16]

Prompts: any JSONL of conversations (LIMA's test or dev file, OpenAI messages); a conversation that
ends with an answer is asked up to its last user turn. Sampling follows the paper (nucleus p 0.9,
temperature 0.7, repetition penalty 1.2) unless the flags say otherwise. Each batch is appended and
flushed as soon as it is done, so an interrupted run continues where it stopped: prompts already in
the output file are not generated again.
"""
from __future__ import annotations

import json
import os
import pathlib

from absl import flags

from lima_jax.cli import define, run, say
from lima_jax.data.records import read_conversations
from lima_jax.errors import LimaError
from lima_jax.evaluate.responses import make_record, prompt_id, read_responses
from lima_jax.sample import _CHECKPOINT, _SEED, Generator, prompt_turns, sampling_params

_PROMPTS = flags.DEFINE_string("prompts", None, "JSONL of conversations to answer")
_OUTPUT = define("string", "output", None, "the response file (JSONL); an existing one is continued")
_GENERATOR = flags.DEFINE_string("generator", None, "the system's name in the response file (default: the checkpoint's folder name)")
_BATCH = flags.DEFINE_integer("batch_size", 8, "prompts sampled together")


def generate_responses(generator: Generator, prompts: list[list[str]], output: pathlib.Path, name: str,
                       params, seed: int, batch_size: int) -> int:
    """Answers the prompts the output file lacks; returns how many were generated now."""
    _drop_partial_line(output)
    done = set(read_responses(output)) if output.exists() else set()
    todo = [turns for turns in dict.fromkeys(map(tuple, prompts)) if prompt_id(turns) not in done]
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = [list(t) for t in todo[start : start + batch_size]]
            # Each prompt's randomness comes from its own id, not its place in a batch: a resumed run
            # samples every remaining prompt as the uninterrupted run would have.
            row_seeds = [int(prompt_id(t)[:8], 16) for t in batch]
            ids = generator([generator.encode(t) for t in batch], params, seed, row_seeds)
            for turns, out in zip(batch, ids):
                f.write(json.dumps(make_record(turns, generator.decode(out), name), ensure_ascii=False) + "\n")
            f.flush()
            say(f"{min(start + batch_size, len(todo))}/{len(todo)} prompts answered")
    return len(todo)


def _drop_partial_line(path: pathlib.Path) -> None:
    """A run killed mid-write leaves a last line without its newline: it is redone, not parsed."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise LimaError(f"unexpected arguments: {' '.join(argv[1:])}")
    for flag in (_CHECKPOINT, _PROMPTS, _OUTPUT):
        if not flag.value:
            raise LimaError(f"--{flag.name} is required")
    if _BATCH.value < 1:
        raise LimaError(f"--batch_size must be positive, got {_BATCH.value}")
    params = sampling_params()
    records, _ = read_conversations(_PROMPTS.value)
    prompts = [prompt_turns(r["conversations"]) for r in records]
    name = _GENERATOR.value or pathlib.Path(os.path.normpath(_CHECKPOINT.value)).name
    generator = Generator(_CHECKPOINT.value)
    count = generate_responses(generator, prompts, pathlib.Path(_OUTPUT.value), name, params, _SEED.value, _BATCH.value)
    say(f"wrote {count} new responses to {_OUTPUT.value}")


if __name__ == "__main__":
    run(main)
