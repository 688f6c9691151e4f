"""Generation into an answer file: the questions asked (a follow-up after the model's own answer), the
sinks that write each file format, resuming what a file lacks, and the record of what its answers were
generated with (`<file>.generation.json`, beside it, so that a run with another checkpoint or other
sampling does not continue it; judging never reads it).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Protocol, Sequence

from lima_jax.data.records import check_appendable, repair_tail
from lima_jax.errors import LimaError
from lima_jax.log import say
from lima_jax.evaluate.answers.records import (Record, digest, make_record, parse_record, prompt_id,
                                               read_response_jsonl)
from lima_jax.inference import hosts
from lima_jax.storage.paths import Appender, Path, PathLike, write_atomically


@dataclasses.dataclass
class Question:
    """What a model is asked: `asks`, user turns asked in order, each after the model's own answer to
    the one before (MT-Bench's second turn sees the first answer), following `history`, turns given
    in the prompt file (an even number: the exchanges before a LIMA test conversation's last turn)."""

    asks: list[str]
    history: list[str] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # question_id, category, dataset: kept by exports

    def prompt(self, answers: Sequence[str]) -> list[str]:
        """The turns that ask `asks[len(answers)]`, after the model's own `answers` to the asks before it."""
        turns = list(self.history)
        for ask, answer in zip(self.asks, answers):
            turns += [ask, answer]
        return turns + [self.asks[len(answers)]]

    def turn_id(self, k: int) -> str:
        """The response id of ask `k`. The first ask's is its prompt's (`prompt_id`), so it pairs with any
        file answering that prompt; a follow-up's names the asks alone, since its prompt holds this
        model's own earlier answers, which differ between systems."""
        first = [*self.history, self.asks[0]]
        return prompt_id(first) if k == 0 else digest({"prompt": first, "follow_ups": self.asks[1 : k + 1]})


def questions_from_prompts(prompts: Iterable[Sequence[str]]) -> list[Question]:
    """Prompts (turns up to a last user turn) as single-ask questions."""
    return [Question(asks=[p[-1]], history=list(p[:-1])) for p in prompts]


class Sink(Protocol):
    """Where generation writes answers, in one file format; called on process 0 only."""

    def answered(self, questions: Sequence[Question]) -> dict[str, str]:
        """{turn id: output} for the asks the output file already answers (after checking that the file
        is this kind of output, for this generator)."""
        ...

    def add(self, done: Sequence[tuple[Question, list[str], int]]) -> None:
        """Each question with all its answers, and the index of the first answer new in this run."""
        ...


def check_generator(path: str, found: Iterable[str], name: str, what: str) -> None:
    """Outputs of another model are never continued under this one's name."""
    other = sorted(set(found) - {name})
    if other:
        raise LimaError(f"{path} holds {what} of {other[0]!r}, not {name!r}: name another --output "
                        "(or pass --overwrite to replace it)")


class ResponseSink:
    """The response file (JSONL, one record per ask), appended a batch at a time."""

    def __init__(self, output: Path, name: str, fresh: bool = False):
        self.output, self.name, self.fresh = output, name, fresh

    def answered(self, questions: Sequence[Question]) -> dict[str, str]:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.fresh or not self.output.exists():
            return {}
        check_appendable(self.output, lambda text: parse_record(text, self.name), "a response file")
        repair_tail(self.output)
        if not self.output.read_text(encoding="utf-8").strip():
            return {}
        records = read_response_jsonl(self.output)
        check_generator(os.fspath(self.output), (r["generator"] for r in records.values()), self.name, "responses")
        return {rid: r["output"] for rid, r in records.items()}

    def add(self, done: Sequence[tuple[Question, list[str], int]]) -> None:
        append_records(self, [self.record(question, answers, k)
                              for question, answers, first in done for k in range(first, len(answers))])

    def record(self, question: Question, answers: Sequence[str], k: int) -> Record:
        """The line of ask `k`, answered `answers[k]` after the earlier answers."""
        return make_record(question.prompt(answers[:k]), answers[k], self.name, question.turn_id(k))


def settings_path(output: PathLike) -> Path:
    """Where an output records how it was generated: beside it, so that the output stays exactly what
    judging, AlpacaEval and FastChat read."""
    output = Path(output)
    return output.with_name(output.name + ".generation.json")


def generation_settings(checkpoint: PathLike, params: Any, seed: int) -> dict[str, Any]:
    """What an answer depends on besides its prompt: the checkpoint read (a step directory; its step,
    None for a converted checkpoint) and the sampling (`inference.sampling_params.SamplingParams`) and seed."""
    path = Path(checkpoint)
    return {"step": int(path.name) if path.name.isdigit() else None, "checkpoint": os.fspath(path),
            "temperature": params.temperature, "top_p": params.top_p, "repetition_penalty": params.repetition_penalty,
            "max_new_tokens": params.max_new_tokens, "seed": seed}


OUTPUT_REMEDY = "name another --output (or pass --overwrite to replace it)"  # how a refused output is fixed


class RecordedSink:
    """A sink whose output records its generation settings (`settings_path`): an output recorded with
    other settings is refused rather than continued; one from before the record is continued, said once,
    and recorded. The record is written after the first answers are added (an --overwrite removes the
    old one first), so an interrupted run leaves at worst an output without a record, never a wrong one."""

    def __init__(self, sink: Any, settings: dict[str, Any], remedy: str = OUTPUT_REMEDY):
        self.sink, self.settings, self.remedy = sink, settings, remedy
        self.output, self.record = sink.output, settings_path(sink.output)
        self.recorded = self.told = False

    def answered(self, questions: Sequence[Question]) -> dict[str, str]:
        known = self.sink.answered(questions)  # its kind and generator are checked first
        if not self.sink.fresh and self.output.exists():
            if self.record.exists():
                self._check(self._read())
            elif known and not self.told:
                say(f"{self.output} records no checkpoint or sampling settings (written before they were "
                    f"recorded): its {len(known)} answers are kept as if generated with these")
                self.told = True
        return known

    def _read(self) -> dict[str, Any]:
        try:
            recorded = json.loads(self.record.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            recorded = None
        if not isinstance(recorded, dict):
            raise LimaError(f"{self.record}: not a JSON object; it records how {self.output} was generated: name "
                            "another --output (or pass --overwrite to replace both)")
        return recorded

    def _check(self, recorded: dict[str, Any]) -> None:
        for key, value in self.settings.items():
            if recorded.get(key) != value:
                raise LimaError(f"{self.output} holds answers generated with {key}={recorded.get(key)}, not {value} "
                                f"(recorded in {self.record}): {self.remedy}")

    def add(self, done: Sequence[tuple[Question, list[str], int]]) -> None:
        if self.sink.fresh:  # the old answers go now: so does their record
            self.record.unlink(missing_ok=True)
        self.sink.add(done)
        if not self.recorded:
            write_atomically(self.record, json.dumps(self.settings, indent=1) + "\n")
            self.recorded = True


def append_records(sink: Any, records: Sequence[dict]) -> None:
    """Appends JSONL records to `sink.output`; a `sink.fresh` (--overwrite) file is emptied first, once the first
    new answers are ready, so a run that fails before them leaves the old file whole."""
    if sink.fresh:
        sink.output.write_text("", encoding="utf-8")
        sink.fresh = False
    with Appender(sink.output) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()


def generate_answers(generator: Any, questions: Sequence[Question], sink: Sink, params, seed: int, batch_size: int,
                     progress: Callable[[str], None] = lambda line: None) -> int:
    """Answers every ask the sink's file lacks with `generator` (an `inference.Generator`), a batch of
    questions at a time: each question's asks in order, a follow-up after the model's own answer;
    returns how many answers were generated now.

    On several processes (a generator on a mesh over a slice) every process takes part in each batch;
    process 0 alone reads and writes the output file and tells the others what remains."""
    first_of: dict[str, Question] = {}
    for q in questions:  # a question asked twice is answered once
        first_of.setdefault(json.dumps([q.history, q.asks]), q)
    unique = list(first_of.values())
    hosts.check_same("the prompts", [[q.history, q.asks] for q in unique])

    def remaining() -> list[tuple[int, list[str]]]:
        known = sink.answered(unique)
        todo = []
        for i, q in enumerate(unique):
            answers: list[str] = []
            while len(answers) < len(q.asks) and q.turn_id(len(answers)) in known:
                answers.append(known[q.turn_id(len(answers))])
            if len(answers) < len(q.asks):
                todo.append((i, answers))
        return todo

    todo = hosts.from_process_0(remaining)
    count = 0
    for start in range(0, len(todo), batch_size):
        batch = [(unique[i], list(answers)) for i, answers in todo[start : start + batch_size]]
        firsts = [len(answers) for _, answers in batch]
        while asking := [(q, a) for q, a in batch if len(a) < len(q.asks)]:  # turn by turn
            # A prompt's randomness is its own (inference.sampler.prompt_seed): a resumed run samples
            # every remaining prompt as the uninterrupted run would have, and as `sample` does.
            ids = generator([generator.encode(q.prompt(a)) for q, a in asking], params, seed)
            for (_, a), out in zip(asking, ids):
                a.append(generator.decode(out))
            count += len(asking)
        if hosts.is_writer():
            sink.add([(q, a, first) for (q, a), first in zip(batch, firsts)])
        progress(f"{min(start + batch_size, len(todo))}/{len(todo)} prompts answered")
    return count


def generate_responses(generator: Any, prompts: list[list[str]], output: Path, name: str,
                       params, seed: int, batch_size: int,
                       progress: Callable[[str], None] = lambda line: None, settings: dict[str, Any] | None = None,
                       remedy: str = OUTPUT_REMEDY) -> int:
    """Answers the prompts the response file `output` lacks (`generate_answers` over single asks); with
    `settings` (`generation_settings`), only if the file was generated with them (`RecordedSink`, whose
    refusal ends with `remedy`)."""
    sink = ResponseSink(output, name)
    if settings is not None:
        sink = RecordedSink(sink, settings, remedy)
    return generate_answers(generator, questions_from_prompts(prompts), sink, params, seed, batch_size, progress)


def generate_file(checkpoint: str, questions: Sequence[Question], sink: Sink, params: Any, seed: int,
                  batch_size: int, mesh: str = "", dtype: str = "auto", heading: str = "",
                  progress: Callable[[str], None] = lambda line: None) -> int:
    """`evaluate.generate` once its inputs are checked: answers what the sink's file lacks with the
    checkpoint (its resolved step, once: a newer step of a run is not mixed in), refusing a file
    generated with another checkpoint or other sampling; `heading` is said before the model loads.
    Returns how many answers were generated now."""
    # JAX, only now: the command has checked its input (and read the output) without it.
    from lima_jax.inference.generator import Generator, parse_mesh
    from lima_jax.weights import checkpoint as checkpoints

    step = checkpoints.resolve(checkpoint)
    settings = generation_settings(step, params, seed)
    if dtype != "auto":  # recorded only when given: the records written before it still match
        settings["dtype"] = dtype
    sink = RecordedSink(sink, settings)
    hosts.from_process_0(lambda: len(sink.answered(questions)))
    if heading:
        progress(heading)
    generator = Generator(str(step), parse_mesh(mesh), dtype)
    return generate_answers(generator, questions, sink, params, seed, batch_size, progress=progress)
