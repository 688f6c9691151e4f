"""Other tools' files, read and written: AlpacaEval's instruction sets and model outputs, MT-Bench's
questions and answers. Generation reads them as prompts and writes them as outputs; judging reads
AlpacaEval outputs (and MT-Bench answers, given their questions) as response files.

AlpacaEval (github.com/tatsu-lab/alpaca_eval): a JSON list of objects. The evaluation set has
`instruction` (and `dataset`, and the reference `output` and `generator`); model outputs, what
`alpaca_eval --model_outputs` reads, are `{"instruction", "output", "generator"}`, where we also keep
the set's `dataset`. An older set's non-empty `input` follows the instruction after a blank line.

MT-Bench (FastChat's `fastchat/llm_judge`): `question.jsonl` holds `{"question_id", "category",
"turns": [...]}` per line; each turn is asked after the model's own answer to the one before. An
answer file holds `{"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns":
[...]}], "tstamp"}` per line; the last line of a question wins, as FastChat reads it.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

from lima_jax.data.records import BadLine, check_appendable, json_object, read_conversations, read_jsonl, repair_tail
from lima_jax.errors import LimaError
from lima_jax.evaluate.answers.generation import (Question, ResponseSink, Sink, append_records, check_generator,
                                                  questions_from_prompts)
from lima_jax.evaluate.answers.records import (Record, digest, file_head, first_object, make_record, prompt_id,
                                               read_response_jsonl)
from lima_jax.storage.paths import Path, write_atomically

FORMATS = ("responses", "alpaca_eval", "mt_bench")


def _json_list(path: str) -> list[Any]:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LimaError(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise LimaError(f"{path}: not JSON ({e})") from None
    if not isinstance(value, list):
        raise LimaError(f"{path}: not a JSON list (AlpacaEval's files are a list of objects)")
    return value


def _string(obj: dict, field: str, where: str, *, required: bool = True, empty: bool = False) -> str | None:
    value = obj.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise LimaError(f"{where}: {field!r} must be a {'' if empty else 'non-empty '}string")
    return value


def _alpaca_items(path: str, *, outputs: bool) -> list[tuple[str, dict]]:
    """(instruction, item) for each item of an AlpacaEval file, checked."""
    items = []
    for i, obj in enumerate(_json_list(path)):
        where = f"{path}: item {i}"
        if not isinstance(obj, dict):
            raise LimaError(f"{where}: not an object with an 'instruction'")
        instruction = _string(obj, "instruction", where)
        extra = _string(obj, "input", where, required=False, empty=True)
        if extra and extra.strip():  # AlpacaFarm's split; AlpacaEval merged it into the instruction
            instruction = f"{instruction}\n\n{extra}"
        if outputs:
            _string(obj, "output", where, empty=True)
            _string(obj, "generator", where, required=False)
        items.append((instruction, obj))
    if not items:
        raise LimaError(f"{path}: an empty list")
    return items


def read_alpaca_eval_prompts(path: str) -> list[Question]:
    """AlpacaEval's evaluation set (its reference outputs are ignored) as single-ask questions."""
    return [Question(asks=[instruction], meta={k: obj[k] for k in ("dataset",) if isinstance(obj.get(k), str)})
            for instruction, obj in _alpaca_items(path, outputs=False)]


def read_alpaca_eval_responses(path: str) -> dict[str, Record]:
    """AlpacaEval model outputs as response records, {id: record}: each instruction a one-turn prompt
    with `prompt_id`'s id, so they pair with our response files for the same instructions."""
    default_generator = Path(path).stem
    records: dict[str, Record] = {}
    first: dict[str, int] = {}
    for i, (instruction, obj) in enumerate(_alpaca_items(path, outputs=True)):
        record = make_record([instruction], obj["output"], obj.get("generator") or default_generator)
        if record["id"] in records:  # e.g. `--all_model_outputs`: several models in one file
            raise LimaError(f"{path}: item {i}: its instruction is also item {first[record['id']]}'s "
                            "(one model's outputs per file)")
        records[record["id"]], first[record["id"]] = record, i
    return records


def alpaca_eval_item(question: Question, output: str, generator: str) -> dict[str, str]:
    if question.history or len(question.asks) != 1:
        raise LimaError("AlpacaEval outputs answer single instructions, and a prompt here is a conversation: "
                        "use --output_format=responses")
    item = {"dataset": question.meta["dataset"]} if "dataset" in question.meta else {}
    return {**item, "instruction": question.asks[0], "output": output, "generator": generator}


def write_alpaca_eval(path: str | os.PathLike, items: Sequence[dict]) -> None:
    write_atomically(path, json.dumps(list(items), ensure_ascii=False, indent=2) + "\n")


def _mt_bench_question(text: str) -> dict:
    obj = json_object(text)
    if not isinstance(obj.get("question_id"), (int, str)) or isinstance(obj.get("question_id"), bool):
        raise BadLine("no 'question_id' (an integer or a string)")
    turns = obj.get("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise BadLine("'turns' must be a non-empty list of non-empty strings (the user turns)")
    if not isinstance(obj.get("category", ""), str):
        raise BadLine("'category' must be a string")
    return obj


def read_mt_bench_questions(path: str) -> list[Question]:
    parsed, _ = read_jsonl(path, _mt_bench_question)
    questions, seen = [], {}
    for lineno, obj in parsed:
        qid = obj["question_id"]
        if qid in seen:
            raise LimaError(f"{path}:{lineno}: question_id {qid!r} already appears on line {seen[qid]}")
        seen[qid] = lineno
        meta = {"question_id": qid, **({"category": obj["category"]} if "category" in obj else {})}
        questions.append(Question(asks=list(obj["turns"]), meta=meta))
    if not questions:
        raise LimaError(f"{path}: no questions")
    return questions


def _mt_bench_answer(text: str) -> dict:
    obj = json_object(text)
    if not isinstance(obj.get("question_id"), (int, str)) or isinstance(obj.get("question_id"), bool):
        raise BadLine("no 'question_id' (an integer or a string)")
    if not isinstance(obj.get("model_id"), str):
        raise BadLine("no 'model_id' (a string)")
    choices = obj.get("choices")
    if (not isinstance(choices, list) or not choices or not isinstance(choices[0], dict)
            or not isinstance(choices[0].get("turns"), list) or not all(isinstance(t, str) for t in choices[0]["turns"])):
        raise BadLine("'choices' must be a list whose first item has 'turns', a list of strings (the answers)")
    return obj


def read_mt_bench_answers(path: str) -> dict[Any, dict]:
    """{question_id: answer line}, the last line of each question winning (as FastChat reads them)."""
    parsed, _ = read_jsonl(path, _mt_bench_answer)
    return {obj["question_id"]: obj for _, obj in parsed}


def mt_bench_answer(question: Question, answers: Sequence[str], model_id: str) -> dict:
    """One answer line; `answer_id` is a hash of what it answers, so the same answers get the same id."""
    qid = question.meta["question_id"]
    return {"question_id": qid, "answer_id": digest([model_id, qid, list(answers)]), "model_id": model_id,
            "choices": [{"index": 0, "turns": list(answers)}], "tstamp": time.time()}


def read_mt_bench_responses(answers_path: str, questions_path: str) -> dict[str, Record]:
    """MT-Bench answers as response records, one per turn (a follow-up's prompt holding the model's own
    earlier answers), {id: record}; the answer file names no question text, so its questions come too."""
    questions = {q.meta["question_id"]: q for q in read_mt_bench_questions(questions_path)}
    records: dict[str, Record] = {}
    for qid, obj in read_mt_bench_answers(answers_path).items():
        question = questions.get(qid)
        if question is None:
            raise LimaError(f"{answers_path}: question_id {qid!r} is not in {questions_path}")
        answers = obj["choices"][0]["turns"]
        if len(answers) != len(question.asks):
            raise LimaError(f"{answers_path}: question_id {qid!r} has {len(answers)} answers for "
                            f"{len(question.asks)} turns")
        for k, answer in enumerate(answers):
            record = make_record(question.prompt(answers[:k]), answer, obj["model_id"], question.turn_id(k))
            records[record["id"]] = record
    if not records:
        raise LimaError(f"{answers_path}: no answers")
    return records


def read_prompts(path: str) -> tuple[list[Question], str]:
    """The questions of a prompt file, and its kind, told from its content: AlpacaEval's evaluation set
    (a JSON list), MT-Bench questions (JSONL with `question_id` and `turns`), or conversations (JSONL:
    LIMA's, OpenAI messages), each asked up to its last user turn."""
    if not Path(path).is_file():
        raise LimaError(f"{path}: no such file")
    head = file_head(path)
    if head.startswith(b"["):
        return read_alpaca_eval_prompts(path), "AlpacaEval instructions"
    first = first_object(head)  # {} for a bad line, which the conversation reader names
    if "question_id" in first and "turns" in first:
        return read_mt_bench_questions(path), "MT-Bench questions"
    records, _ = read_conversations(path)
    # A conversation that ends with an answer is asked up to its last user turn.
    conversations = [r["conversations"] for r in records]
    return questions_from_prompts(c if len(c) % 2 else c[:-1] for c in conversations), "conversations"


class AlpacaEvalSink:
    """AlpacaEval model outputs, rewritten whole (atomically) after each batch: a JSON list cannot be
    appended to, and 805 answers rewrite in a moment."""

    def __init__(self, output: Path, name: str, fresh: bool = False):
        self.output, self.name, self.fresh = output, name, fresh
        self.items: list[dict] = []

    def answered(self, questions: Sequence[Question]) -> dict[str, str]:
        for q in questions:
            alpaca_eval_item(q, "", self.name)  # a conversation is refused before anything is generated
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.fresh or not self.output.exists():
            return {}
        path = os.fspath(self.output)
        try:
            items = _alpaca_items(path, outputs=True)
        except LimaError as e:
            raise LimaError(f"{e}; it is not AlpacaEval outputs: name another --output (or pass --overwrite)") from None
        check_generator(path, (obj.get("generator") or self.name for _, obj in items), self.name, "AlpacaEval outputs")
        self.items = [obj for _, obj in items]
        return {prompt_id([instruction]): obj["output"] for instruction, obj in items}

    def add(self, done: Sequence[tuple[Question, list[str], int]]) -> None:
        self.items += [alpaca_eval_item(q, answers[0], self.name) for q, answers, _ in done]
        write_alpaca_eval(self.output, self.items)


class MtBenchSink:
    """MT-Bench answers, a line per question once all its turns are answered, appended a batch at a time."""

    def __init__(self, output: Path, name: str, fresh: bool = False):
        self.output, self.name, self.fresh = output, name, fresh

    def answered(self, questions: Sequence[Question]) -> dict[str, str]:
        if any("question_id" not in q.meta for q in questions):
            raise LimaError("--output_format=mt_bench answers MT-Bench questions: give their question.jsonl as --prompts")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.fresh or not self.output.exists():
            return {}
        check_appendable(self.output, _mt_bench_answer, "an MT-Bench answer file")
        repair_tail(self.output)
        answers = read_mt_bench_answers(os.fspath(self.output))
        check_generator(os.fspath(self.output), (a["model_id"] for a in answers.values()), self.name, "MT-Bench answers")
        known = {}
        for q in questions:
            turns = answers.get(q.meta["question_id"], {}).get("choices", [{}])[0].get("turns", [])
            if len(turns) == len(q.asks):  # a question is done whole or not at all
                known.update({q.turn_id(k): t for k, t in enumerate(turns)})
        return known

    def add(self, done: Sequence[tuple[Question, list[str], int]]) -> None:
        append_records(self, [mt_bench_answer(question, answers, self.name) for question, answers, _ in done])


def make_sink(output_format: str, output: Path, name: str, fresh: bool = False) -> Sink:
    sinks = {"responses": ResponseSink, "alpaca_eval": AlpacaEvalSink, "mt_bench": MtBenchSink}
    if output_format not in sinks:
        raise LimaError(f"output format {output_format!r}: one of {', '.join(FORMATS)}")
    return sinks[output_format](output, name, fresh)


def read_responses(path: str | os.PathLike, mt_bench_questions: str | None = None) -> dict[str, Record]:
    """Any response file into {id: record}, in file order: this project's JSONL, AlpacaEval's model
    outputs (a JSON list), or MT-Bench answers given the questions they answer."""
    name = os.fspath(path)
    head = file_head(name)
    if head.startswith(b"["):
        return read_alpaca_eval_responses(name)
    if mt_bench_questions and "choices" in first_object(head):
        return read_mt_bench_responses(name, mt_bench_questions)
    return read_response_jsonl(name)
