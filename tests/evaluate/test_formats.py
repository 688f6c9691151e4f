"""AlpacaEval's and MT-Bench's files in and out of generation and judging: the formats round trip,
MT-Bench's second turn is asked after the model's own first answer, and a lima_jax checkpoint
served by `python -m lima_jax.serve` judges AlpacaEval outputs through `--judge_url`."""
import json

import pytest
from support.commands import call_command
from support.serving import start_server, stop_server, tiny_checkpoint, wait_until_healthy

from lima_jax.errors import LimaError
from lima_jax.evaluate.answers import formats
from lima_jax.evaluate.judge import prompts
from lima_jax.evaluate.answers.generation import Question, ResponseSink, generate_answers
from lima_jax.evaluate.answers.records import make_record, prompt_id, write_responses
from lima_jax.evaluate.answers.formats import read_responses

QUESTIONS = [  # as in FastChat's data/mt_bench/question.jsonl
    {"question_id": 81, "category": "writing", "turns": ["Write a travel blog post about Hawaii.",
                                                         "Rewrite it starting every sentence with A."]},
    {"question_id": 101, "category": "reasoning", "turns": ["Who is first if you pass the second person?",
                                                            "And if you pass the last person?"]},
]
EVAL_SET = [  # as in AlpacaEval's alpaca_eval.json: the reference output comes with the instruction
    {"dataset": "helpful_base", "instruction": "What are the names of some famous actors?",
     "output": "Some famous actors are ...", "generator": "text_davinci_003"},
    {"dataset": "oasst", "instruction": "How do I make a cake?", "output": "Mix flour ...", "generator": "text_davinci_003"},
]


def _write(path, items, jsonl=False):
    path.write_text("".join(json.dumps(i) + "\n" for i in items) if jsonl else json.dumps(items, indent=4))
    return path


class Echo:
    """A generator without a model: the answer names the last turn and how many turns came before."""

    def __init__(self):
        self.asked: list[list[str]] = []

    def encode(self, turns):
        self.asked.append(list(turns))
        return list(turns)

    def decode(self, turns):
        return f"answer {len(turns) // 2 + 1} to {turns[-1]}"

    def __call__(self, prompts, params, seed):
        return prompts


def test_alpaca_eval_outputs_round_trip_and_read_as_response_files(tmp_path):
    questions, kind = formats.read_prompts(str(_write(tmp_path / "alpaca_eval.json", EVAL_SET)))
    assert kind == "AlpacaEval instructions"
    assert [q.asks for q in questions] == [[e["instruction"]] for e in EVAL_SET] and questions[0].meta == {"dataset": "helpful_base"}
    items = [formats.alpaca_eval_item(q, f"out {i}", "lima-7b") for i, q in enumerate(questions)]
    formats.write_alpaca_eval(tmp_path / "model_outputs.json", items)
    assert json.loads((tmp_path / "model_outputs.json").read_text()) == [
        {"dataset": e["dataset"], "instruction": e["instruction"], "output": f"out {i}", "generator": "lima-7b"}
        for i, e in enumerate(EVAL_SET)]
    records = read_responses(tmp_path / "model_outputs.json")  # told from JSONL by its content
    assert list(records.values()) == [make_record([e["instruction"]], f"out {i}", "lima-7b") for i, e in enumerate(EVAL_SET)]
    assert list(records) == [prompt_id([e["instruction"]]) for e in EVAL_SET]  # pairs with our files by prompt

    older = _write(tmp_path / "older.json", [{"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}])
    assert list(read_responses(older).values()) == [make_record(["Translate.\n\nBonjour"], "Hello", "older")]
    twice = _write(tmp_path / "all.json", [{**EVAL_SET[0], "generator": g} for g in ("a", "b")])
    with pytest.raises(LimaError, match=r"all.json: item 1: its instruction is also item 0's"):
        read_responses(twice)
    with pytest.raises(LimaError, match=r"bad.json: item 1: 'output' must be a string"):
        read_responses(_write(tmp_path / "bad.json", [EVAL_SET[0], {"instruction": "x"}]))


def test_mt_bench_questions_and_answers_round_trip(tmp_path):
    questions, kind = formats.read_prompts(str(_write(tmp_path / "question.jsonl", QUESTIONS, jsonl=True)))
    assert kind == "MT-Bench questions"
    q = questions[0]
    assert q.asks == QUESTIONS[0]["turns"] and q.meta == {"question_id": 81, "category": "writing"}
    assert q.prompt(["A1"]) == [q.asks[0], "A1", q.asks[1]] and q.turn_id(0) == prompt_id([q.asks[0]])
    lines = [formats.mt_bench_answer(q, [f"{q.meta['question_id']} one", f"{q.meta['question_id']} two"], "lima-7b")
             for q in questions]
    _write(tmp_path / "answers.jsonl", lines, jsonl=True)
    read = formats.read_mt_bench_answers(str(tmp_path / "answers.jsonl"))
    assert read == {81: lines[0], 101: lines[1]}
    assert lines[0]["choices"] == [{"index": 0, "turns": ["81 one", "81 two"]}] and lines[0]["model_id"] == "lima-7b"
    assert set(lines[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    records = formats.read_mt_bench_responses(str(tmp_path / "answers.jsonl"), str(tmp_path / "question.jsonl"))
    assert list(records.values()) == [
        make_record([q.asks[0]], "81 one", "lima-7b"),
        make_record([q.asks[0], "81 one", q.asks[1]], "81 two", "lima-7b", q.turn_id(1)),
        make_record([questions[1].asks[0]], "101 one", "lima-7b"),
        make_record(questions[1].prompt(["101 one"]), "101 two", "lima-7b", questions[1].turn_id(1))]

    # Judging reads MT-Bench answers given their questions, and asks for them otherwise.
    assert read_responses(tmp_path / "answers.jsonl", str(tmp_path / "question.jsonl")) == records
    with pytest.raises(LimaError, match=r"answers.jsonl:1: an MT-Bench answer.*--mt_bench_questions=question.jsonl"):
        read_responses(tmp_path / "answers.jsonl")

    (tmp_path / "bad.jsonl").write_text(json.dumps(QUESTIONS[0]) + "\n" + json.dumps({"question_id": 2, "turns": []}) + "\n")
    with pytest.raises(LimaError, match=r"bad.jsonl:2: 'turns' must be a non-empty list"):
        formats.read_prompts(str(tmp_path / "bad.jsonl"))


def test_a_follow_up_is_asked_after_the_models_own_answer_and_a_resumed_run_asks_only_what_is_missing(tmp_path):
    questions = formats.read_mt_bench_questions(str(_write(tmp_path / "question.jsonl", QUESTIONS, jsonl=True)))
    out = tmp_path / "answers.jsonl"
    echo = Echo()
    first = formats.MtBenchSink(out, "echo")
    assert generate_answers(echo, questions[:1], first, None, 0, batch_size=8) == 2
    q = questions[0]
    assert echo.asked == [[q.asks[0]], [q.asks[0], f"answer 1 to {q.asks[0]}", q.asks[1]]]
    echo.asked.clear()
    assert generate_answers(echo, questions, formats.MtBenchSink(out, "echo"), None, 0, batch_size=8) == 2
    assert [turns[-1] for turns in echo.asked] == questions[1].asks  # question 81 was not asked again
    answers = formats.read_mt_bench_answers(str(out))
    assert answers[101]["choices"][0]["turns"] == [f"answer {k + 1} to {t}" for k, t in enumerate(questions[1].asks)]
    with pytest.raises(LimaError, match=r"answers.jsonl holds MT-Bench answers of 'echo', not 'other'.*--overwrite"):
        generate_answers(echo, questions, formats.MtBenchSink(out, "other"), None, 0, batch_size=8)
    assert generate_answers(echo, questions, formats.MtBenchSink(out, "other", fresh=True), None, 0, batch_size=8) == 4
    assert {a["model_id"] for a in formats.read_mt_bench_answers(str(out)).values()} == {"other"}

    # The same questions as a response file: one record per turn, read back as the MT-Bench answers are.
    responses = tmp_path / "responses.jsonl"
    assert generate_answers(Echo(), questions, ResponseSink(responses, "other"), None, 0, batch_size=1) == 4
    assert read_responses(responses) == formats.read_mt_bench_responses(str(out), str(tmp_path / "question.jsonl"))
    assert read_responses(responses, str(tmp_path / "question.jsonl")) == read_responses(responses)  # ours, as it is

    alpaca = tmp_path / "model_outputs.json"
    with pytest.raises(LimaError, match="single instructions"):
        generate_answers(Echo(), questions, formats.AlpacaEvalSink(alpaca, "echo"), None, 0, batch_size=8)
    single = [Question(asks=[e["instruction"]], meta={"dataset": e["dataset"]}) for e in EVAL_SET]
    assert generate_answers(Echo(), single[:1], formats.AlpacaEvalSink(alpaca, "echo"), None, 0, batch_size=8) == 1
    assert generate_answers(Echo(), single, formats.AlpacaEvalSink(alpaca, "echo"), None, 0, batch_size=8) == 1
    assert [i["output"] for i in json.loads(alpaca.read_text())] == [f"answer 1 to {e['instruction']}" for e in EVAL_SET]
    with pytest.raises(LimaError, match=r"responses.jsonl: not JSON.*it is not AlpacaEval outputs"):
        formats.AlpacaEvalSink(responses, "echo").answered(single)


def test_generate_refuses_an_output_of_another_generator_before_loading_the_checkpoint(tmp_path):
    prompts_file = _write(tmp_path / "alpaca_eval.json", EVAL_SET)
    out = _write(tmp_path / "model_outputs.json", [{**EVAL_SET[0], "generator": "someone"}])
    r = call_command("evaluate.generate", f"--checkpoint={tmp_path / 'no-such-checkpoint'}", f"--prompts={prompts_file}",
                     f"--output={out}", "--output_format=alpaca_eval", "--generator=lima-7b")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (f"error: {out} holds AlpacaEval outputs of 'someone', not 'lima-7b': "
                                                 "name another --output (or pass --overwrite to replace it)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random model with a context long enough for a judging prompt (about 700 demo-tokenizer tokens)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("formats"), max_len=1024)


@pytest.fixture(scope="module")
def generator(checkpoint):
    from lima_jax.inference.generator import Generator

    return Generator(str(checkpoint))


def _greedy(generator, turns, max_new_tokens):
    """What the checkpoint answers greedily, as `lima_jax.sample` and the server decode it."""
    from lima_jax.inference.sampler import SamplingParams

    ids = generator([generator.encode(turns)], SamplingParams(temperature=0, max_new_tokens=max_new_tokens), 0)[0]
    return generator.decode([t for t in ids if t not in generator.stop_ids])


def test_mt_bench_two_turn_generation_with_a_checkpoint(generator, tmp_path):
    from lima_jax.inference.sampler import SamplingParams

    questions = formats.read_mt_bench_questions(str(_write(tmp_path / "question.jsonl", QUESTIONS, jsonl=True)))
    out = tmp_path / "model_answer" / "tiny.jsonl"
    params = SamplingParams(temperature=0, max_new_tokens=6)
    assert generate_answers(generator, questions, formats.MtBenchSink(out, "tiny"), params, 0, batch_size=2) == 4
    answers = formats.read_mt_bench_answers(str(out))
    for q in questions:
        one, two = answers[q.meta["question_id"]]["choices"][0]["turns"]
        assert one == _greedy(generator, [q.asks[0]], 6)
        assert two == _greedy(generator, [q.asks[0], one, q.asks[1]], 6)  # asked after its own first answer
        assert one and two != _greedy(generator, [q.asks[1]], 6)


def test_a_checkpoint_served_over_http_judges_alpaca_eval_outputs_pairwise(checkpoint, generator, tmp_path):
    ours = _write(tmp_path / "model_outputs.json", [{**e, "output": f"Ours: {e['output']}", "generator": "lima-7b"}
                                                    for e in EVAL_SET])
    baseline = tmp_path / "baseline.jsonl"
    write_responses(baseline, [make_record([e["instruction"]], e["output"], "davinci") for e in EVAL_SET])
    log = open(tmp_path / "server.log", "w+")
    server, url = start_server(checkpoint, log, "--model_name=judge", "--batch_sizes=1", "--max_logprobs=-1",
                               "--max_tokens=8", "--chunk_steps=8")
    try:
        wait_until_healthy(server, url, log)
        cache = tmp_path / "judgments.jsonl"
        r = call_command("evaluate.pairwise", f"--ours={ours}", f"--baseline={baseline}", f"--judge_url={url}",
                         "--judge_model=judge", "--api_key_env=", f"--cache={cache}", "--judge_max_tokens=8",
                         "--max_retries=0", "--workers=2", "--max_failures=0")
    finally:
        stop_server(server)
        log.close()
    assert r.returncode == 0, r.stderr[-2000:]
    judgments = [json.loads(line) for line in cache.read_text().splitlines()]
    assert sorted((j["prompt_id"], j["order"]) for j in judgments) == sorted(
        (prompt_id([e["instruction"]]), o) for e in EVAL_SET for o in ("ours_first", "baseline_first"))
    for j in judgments:
        e = next(e for e in EVAL_SET if prompt_id([e["instruction"]]) == j["prompt_id"])
        a, b = (f"Ours: {e['output']}", e["output"])[:: 1 if j["order"] == "ours_first" else -1]
        system, user = prompts.pairwise_messages([e["instruction"]], a, b)
        # The server puts a system message before the first user turn; the judge's answer is the checkpoint's.
        raw = _greedy(generator, [system["content"] + "\n\n" + user["content"]], 8)
        assert j["judge"] == "judge" and j["ours_generator"] == "lima-7b" and j["baseline_generator"] == "davinci"
        assert j["raw"] == raw
        assert j["verdict"] == prompts.parse_verdict(raw, prompts.PAIRWISE_CHOICES)
        if j["verdict"] is None:  # a random model's words: recorded as a failure, never as a tie
            assert j["error"].startswith("1 attempts, last: no readable verdict in the answer")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    failed = {j["prompt_id"] for j in judgments if j["verdict"] is None}
    assert summary["judge"] == "judge" and summary["ours"] == "lima-7b" and summary["failed"] == len(failed)
