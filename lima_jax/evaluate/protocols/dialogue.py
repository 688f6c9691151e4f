"""Scripted multi-turn dialogues (LIMA §6): the dialogues file, playing it against each checkpoint (its own
answers kept in context), rating every assistant turn with the conversation so far, and §6's figures per
checkpoint (Figure 7's distribution, per turn position, failures within 3 interactions, conversations
better than the first checkpoint's). A transcript is a response file whose lines also name their
`dialogue` and `turn`. "Fails within 3 interactions": a Fail among the first three assistant turns.
"Better in a conversation": a higher mean rating over its turns (Fail 0, Pass 1, Excellent 2), our
reading of the paper's comparison (the README's multi-turn section gives the file formats)."""
from __future__ import annotations

import dataclasses
import json
import statistics
from typing import Any, Callable, Sequence

from lima_jax.data.records import BadLine, json_object, read_jsonl
from lima_jax.errors import LimaError
from lima_jax.log import say
from lima_jax.evaluate import charts, stats
from lima_jax.evaluate.answers.formats import read_responses
from lima_jax.evaluate.answers.generation import Question, ResponseSink, generate_answers
from lima_jax.evaluate.answers.records import Record, digest, text_hash
from lima_jax.evaluate.judge import prompts
from lima_jax.evaluate.judge.cache import JudgmentCache
from lima_jax.evaluate.judge.protocol import Judge
from lima_jax.evaluate.judge.runner import RunStats
from lima_jax.evaluate.protocols.absolute import RATINGS, judge_absolute
from lima_jax.storage.paths import Path, user_path, write_atomically

WITHIN = 3  # interactions
SCORE = {rating: i for i, rating in enumerate(RATINGS)}  # Fail 0, Pass 1, Excellent 2
CHART = "dialogue_ratings.png"


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


def transcript_file(out: Path, name: str) -> Path:
    return out / "transcripts" / f"{name}.jsonl"


def play_all(dialogues: Sequence[Dialogue], checkpoints: Sequence[tuple[str, str]], out: Path, params, seed: int,
             batch_size: int) -> None:
    """Plays what each checkpoint's transcript lacks, one model in memory at a time (a checkpoint whose
    transcript is complete is not even loaded)."""
    for name, path in checkpoints:
        transcript = transcript_file(out, name)
        if not unplayed(dialogues, transcript, name):
            say(f"{name}: {transcript} is complete")
            continue
        from lima_jax.inference.generator import Generator  # JAX, only for a checkpoint with turns to play

        generator = Generator(path)
        if generator.eot_id is None:
            say(f"warning: {path} was not fine-tuned with LIMA's end-of-turn token: turns are joined as plain text")
        count = play(generator, dialogues, transcript, name, params, seed, batch_size,
                     progress=lambda line, name=name: say(f"{name}: {line}"))
        say(f"{name}: {count} assistant turns generated into {transcript}")
        del generator


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


def rate_all(dialogues: Sequence[Dialogue], names: Sequence[str], out: Path, judge: Judge, cache: JudgmentCache,
             workers: int = 1, max_failures: int | None = None) -> list[Rated]:
    """Each checkpoint's transcript rated (`rate`), in order; the last one's stats say whether the run
    stopped there for too many failed judgments."""
    rated = []
    for name in names:
        rated.append(rate(dialogues, transcript_file(out, name), name, judge, cache, workers=workers,
                          max_failures=max_failures))
        if rated[-1].stats.stopped:
            break
    return rated


def _dist(name: str, ratings: list[str], judge: str, samples: int, seed: int) -> stats.Distribution:
    labels = {str(i): r for i, r in enumerate(ratings)}  # unrated turns ("failed", "missing") are excluded
    return stats.distribution(name, labels, RATINGS, {judge}, samples, seed)


def fails_within(turns: Sequence[str], n: int = WITHIN) -> bool | None:
    """Whether one of the first `n` turns is a Fail; None when unknown (an unrated turn, no Fail)."""
    first = list(turns[:n])
    if "Fail" in first:
        return True
    return None if any(r not in RATINGS for r in first) else False


def mean_score(turns: Sequence[str]) -> float | None:
    scores = [SCORE[r] for r in turns if r in SCORE]
    return statistics.fmean(scores) if scores else None


def checkpoint_summary(rated: Rated, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    every = [r for turns in rated.ratings.values() for r in turns]
    overall = _dist(rated.name, every, rated.judge, samples, seed)
    positions = max(map(len, rated.ratings.values()))
    per_turn = {}
    for k in range(positions):
        at_k = [turns[k] for turns in rated.ratings.values() if len(turns) > k]
        d = _dist(f"turn {k + 1}", at_k, rated.judge, samples, seed)
        per_turn[str(k + 1)] = {"counts": d.counts, "unrated": d.excluded}
    within = [fails_within(turns) for turns in rated.ratings.values()]
    return {
        "name": rated.name, "judge": rated.judge, "conversations": len(rated.ratings), "turns": len(every),
        "overall": overall.to_json(),
        "per_turn": per_turn,
        f"failed_within_{WITHIN}": sum(w is True for w in within),
        f"unknown_within_{WITHIN}": sum(w is None for w in within),
        "dialogues": rated.ratings,
        "asked_now": rated.stats.asked,
    }


def compare(first: Rated, other: Rated) -> dict[str, int]:
    """Conversations where `other` has a higher, equal or lower mean rating than `first`."""
    out = {"better": 0, "tied": 0, "worse": 0, "unrated": 0}
    for did, turns in first.ratings.items():
        a, b = mean_score(turns), mean_score(other.ratings[did])
        if a is None or b is None:
            out["unrated"] += 1
        else:
            out["better" if b > a else "tied" if b == a else "worse"] += 1
    return out


def markdown(summaries: Sequence[dict[str, Any]], comparisons: dict[str, dict[str, int]]) -> str:
    judges = sorted({s["judge"] for s in summaries})
    lines = ["# Multi-turn dialogues (LIMA §6)", "",
             f"Judge: {', '.join(judges)}. Every assistant turn rated with the conversation before it.", "",
             "| checkpoint | conversations | turns rated | Excellent | Pass | Fail | unrated "
             f"| conversations failing within {WITHIN} |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        o = s["overall"]
        cells = [f"{o['counts'][r]} ({o['pct'][r] if o['pct'][r] is not None else 'n/a'}%)" for r in reversed(RATINGS)]
        unknown = f" (+{s[f'unknown_within_{WITHIN}']} unknown)" if s[f"unknown_within_{WITHIN}"] else ""
        lines.append(f"| {s['name']} | {s['conversations']} | {o['judged']} | {' | '.join(cells)} | {o['excluded']} "
                     f"| {s[f'failed_within_{WITHIN}']} of {s['conversations']}{unknown} |")
    lines += ["", "Per turn position (Excellent / Pass / Fail):", "",
              "| checkpoint | " + " | ".join(f"turn {k}" for k in summaries[0]["per_turn"]) + " |",
              "|---|" + "---|" * len(summaries[0]["per_turn"])]
    for s in summaries:
        cells = [f"{t['counts']['Excellent']} / {t['counts']['Pass']} / {t['counts']['Fail']}" for t in s["per_turn"].values()]
        lines.append(f"| {s['name']} | " + " | ".join(cells) + " |")
    for name, c in comparisons.items():
        lines += ["", f"{name} against {summaries[0]['name']}, per conversation (mean rating): better in "
                      f"{c['better']}, tied in {c['tied']}, worse in {c['worse']}"
                      + (f", {c['unrated']} unrated" if c["unrated"] else "") + "."]
    lines += ["", "Paper (LIMA 65B, 10 conversations): zero-shot 45.2% Excellent, 19.1% Pass, 35.7% Fail, 6 of 10 "
                  "failing within 3 interactions; with 30 dialogue chains 76.1% / 21.7% / 2.2%, 1 of 10; better in "
                  "7 of 10 conversations, tied in 3.", "", f"Chart: {CHART}"]
    return "\n".join(lines) + "\n"


def write(out_dir: str, rated: Sequence[Rated], samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """report.md, report.json and the Figure-7 chart in `out_dir`, rewritten from the ratings (they are
    derived: the transcripts and the judgment cache are the record). Returns report.json's content."""
    out = user_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [checkpoint_summary(r, samples, seed) for r in rated]
    comparisons = {r.name: compare(rated[0], r) for r in rated[1:]}
    report = {"checkpoints": summaries, "compared_with_first": comparisons,
              "bootstrap": {"samples": samples, "seed": seed}}
    write_atomically(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    text = markdown(summaries, comparisons)
    write_atomically(out / "report.md", text)
    rows = [_dist(r.name, [x for t in r.ratings.values() for x in t], r.judge, samples, seed) for r in rated]
    fig = charts.stacked_bars(rows, RATINGS, charts.RATING_COLORS, "% of assistant turns",
                                 "Multi-turn dialogues: the rating of each assistant turn")
    charts.save_png(fig, out / CHART)
    return report
