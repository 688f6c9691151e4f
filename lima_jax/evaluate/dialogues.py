"""Scripted multi-turn dialogues (LIMA §6): the dialogues file, playing it against a model that keeps
its own answers in context, and rating every assistant turn in the light of the conversation so far.

The dialogues file is JSONL, one dialogue a line:

    {"id": "trip-planning", "turns": ["Plan me a 3-day trip to Rome.", "Make day 2 cheaper.", ...]}

`turns` are the user's turns, asked in order, each after the model's own answer to the one before.
`id` names the dialogue in the transcript and the report (default: a hash of the turns). A LIMA-style
`{"conversations": [user, assistant, user, ...]}` line is read too: its user turns are the script, its
assistant turns are ignored (so the training chains' own prompts can be replayed).

The transcript (one per checkpoint) is a response file (`lima_jax.evaluate.responses`) with two more
fields: each line is one assistant turn, `prompt` the conversation up to the user turn it answers,
`dialogue` the dialogue's id and `turn` its position (1 = the first answer). Judging reads it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from lima_jax.data.records import BadLine, json_object, read_jsonl
from lima_jax.errors import LimaError
from lima_jax.evaluate import prompts
from lima_jax.evaluate.judges import Judge
from lima_jax.evaluate.judging import JudgmentCache, RunStats
from lima_jax.evaluate.ratings import judge_absolute
from lima_jax.evaluate.responses import Question, Record, ResponseSink, digest, generate_answers, text_hash
from lima_jax.evaluate.formats import read_responses
from lima_jax.storage.paths import Path, user_path


@dataclasses.dataclass
class Dialogue(Question):
    """A scripted dialogue: `asks` are its user turns."""

    dialogue_id: str = ""

    def turn_id(self, k: int) -> str:
        """The transcript id of answer `k`: the dialogue, the turn, and the user turns so far (a script
        edited since a transcript was written is played again from the first changed turn)."""
        return f"{self.dialogue_id}/{k + 1}/{digest(self.asks[: k + 1])[:8]}"


def _parse(text: str) -> tuple[str | None, list[str]]:
    obj = json_object(text)
    if "turns" in obj:
        turns = obj["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise BadLine("'turns' must be a non-empty list of non-empty strings (the user's turns)")
    elif "conversations" in obj:
        conversation = obj["conversations"]
        if not isinstance(conversation, list) or not conversation or not all(isinstance(t, str) for t in conversation):
            raise BadLine("'conversations' must be a non-empty list of strings")
        turns = conversation[0::2]
    else:
        raise BadLine("missing 'turns' (the user's turns of a dialogue)")
    did = obj.get("id")
    if did is not None and (not isinstance(did, str) or not did.strip() or "/" in did):
        raise BadLine("'id' must be a non-empty string without '/'")
    return did, turns


def read_dialogues(path: str) -> list[Dialogue]:
    """The dialogues of a JSONL file, in file order; a bad line raises `file:line: why`."""
    parsed, _ = read_jsonl(path, _parse)
    dialogues: list[Dialogue] = []
    seen: dict[str, int] = {}
    scripts: dict[str, int] = {}
    for lineno, (did, turns) in parsed:
        did = did or digest(turns)[:12]
        if did in seen:
            raise LimaError(f"{path}:{lineno}: dialogue id {did!r} already appears on line {seen[did]}")
        script = digest(turns)
        if script in scripts:  # two ids for one script would share one transcript
            raise LimaError(f"{path}:{lineno}: the same user turns as the dialogue on line {scripts[script]}")
        seen[did], scripts[script] = lineno, lineno
        dialogues.append(Dialogue(asks=list(turns), meta={"dialogue": did}, dialogue_id=did))
    if not dialogues:
        raise LimaError(f"{path}: no dialogues")
    return dialogues


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


class TranscriptSink(ResponseSink):
    """The transcript: the response file, each line naming its dialogue and turn."""

    def record(self, question: Question, answers: Sequence[str], k: int) -> Record:
        assert isinstance(question, Dialogue)
        return {**super().record(question, answers, k), "dialogue": question.dialogue_id, "turn": k + 1}


def unplayed(dialogues: Sequence[Dialogue], transcript: Path, name: str) -> int:
    """How many assistant turns the transcript still lacks (0: the checkpoint need not be loaded)."""
    known = TranscriptSink(transcript, name).answered(dialogues)
    return sum(1 for d in dialogues for k in range(len(d.asks)) if d.turn_id(k) not in known)


def play(generator: Any, dialogues: Sequence[Dialogue], transcript: Path, name: str, params, seed: int,
         batch_size: int, progress: Callable[[str], None] = lambda line: None) -> int:
    """Plays every turn the transcript lacks; the dialogues of a batch are asked turn by turn together,
    each with the model's own earlier answers in its prompt. Returns how many turns were generated."""
    return generate_answers(generator, dialogues, TranscriptSink(transcript, name), params, seed, batch_size, progress)


@dataclasses.dataclass
class Rated:
    """One checkpoint's dialogues, rated: per dialogue, each turn's rating ("failed"/"missing" when
    the judge gave none)."""

    name: str
    ratings: dict[str, list[str]]
    stats: RunStats
    judge: str


def rate(dialogues: Sequence[Dialogue], transcript: Path, name: str, judge: Judge, cache: JudgmentCache,
         workers: int = 1, max_failures: int | None = None, progress: bool = True) -> Rated:
    """Rates each assistant turn of the transcript with the conversation before it (the absolute
    judge's prompt for dialogues); what the cache holds is not asked again. The judgment names the
    whole conversation, so a turn whose earlier answers changed is rated afresh."""
    records = read_responses(transcript)
    by_key: dict[str, Record] = {}
    where: dict[str, tuple[str, int]] = {}
    for d in dialogues:
        for k in range(len(d.asks)):
            r = records.get(d.turn_id(k))
            if r is None:
                raise LimaError(f"{transcript}: no answer to turn {k + 1} of dialogue {d.dialogue_id!r}; play it first")
            key = digest({"turn": d.turn_id(k), "conversation": text_hash("\n".join(r["prompt"]))})
            by_key[key] = {**r, "id": key}
            where[key] = (d.dialogue_id, k)
    result = judge_absolute(by_key, judge, cache, workers=workers, max_failures=max_failures, progress=progress,
                            version=prompts.ABSOLUTE_DIALOGUE_VERSION, messages=prompts.dialogue_absolute_messages)
    ratings: dict[str, list[str]] = {d.dialogue_id: [""] * len(d.asks) for d in dialogues}
    for key, rating in result.results.items():
        did, k = where[key]
        ratings[did][k] = rating
    return Rated(name, ratings, result.stats, judge.name)
