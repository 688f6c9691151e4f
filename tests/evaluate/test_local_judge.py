"""A local lima_jax checkpoint as the judge: verdicts from the log-probabilities of the answers."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from lima_jax.evaluate.judge.cache import JudgmentCache
from lima_jax.evaluate.judge.local import ANSWER_PREFIX, LocalJudge
from lima_jax.evaluate.protocols.pairwise import judge_pairwise
from lima_jax.evaluate.judge.prompts import pairwise_messages
from lima_jax.evaluate.judge.factory import make_judge
from lima_jax.evaluate.answers.records import make_record, write_responses
from support.models import converted_checkpoint, forward

PROMPTS = [["What is 2 plus 2?"], ["Name a color."], ["Spell cat backwards."]]


def by_hand(judge, messages, choices) -> dict[str, float]:
    """Each choice's score from a full forward pass over the prompt, the answer prefix and the choice (one
    row each, right-padded to one width: causal attention never sees the padding)."""
    sp = judge.generator.tokenizer.text.sp  # sentencepiece itself
    head = sp.encode(judge.answer_prefix.rstrip())
    conts = [sp.encode(judge.answer_prefix + c)[len(head):] for c in choices]
    rows = [judge._prefix(messages) + head + c for c in conts]
    tokens = np.zeros((len(rows), max(map(len, rows))), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    logp = np.asarray(jax.nn.log_softmax(forward(judge.generator.model, tokens), axis=-1))
    return {choice: float(sum(logp[i, len(r) - len(c) + k - 1, t] for k, t in enumerate(c)))
            for i, (choice, r, c) in enumerate(zip(choices, rows, conts))}


def test_verdict_is_the_most_likely_answer(judge_ckpt):
    judge = LocalJudge(str(judge_ckpt))
    messages = pairwise_messages(PROMPTS[0], "4", "5")
    choice, raw = judge.verdict(messages, ["A", "B", "C"])
    scores = json.loads(raw)["logprobs"]
    assert choice == max(scores, key=scores.get) and set(scores) == {"A", "B", "C"}
    # The scores by hand: the log-probability of each choice's tokens after "Verdict:" in the answer.
    assert judge.answer_prefix == ANSWER_PREFIX
    assert scores == pytest.approx(by_hand(judge, messages, ["A", "B", "C"]), abs=1e-4)


def test_pairwise_with_the_local_judge(judge_ckpt, tmp_path):
    ours = {r["id"]: r for r in (make_record(p, "answer one", "ours") for p in PROMPTS)}
    base = {r["id"]: r for r in (make_record(p, "another answer", "base") for p in PROMPTS)}
    cache = JudgmentCache(tmp_path / "cache.jsonl")
    result = judge_pairwise(ours, base, LocalJudge(str(judge_ckpt)), cache, progress=False)
    s = result.summary
    assert s["win"] + s["tie"] + s["loss"] == 3 and s["failed"] == 0
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 6  # both orders, every prompt

    write_responses(tmp_path / "ours.jsonl", ours.values())
    write_responses(tmp_path / "base.jsonl", base.values())
    r = subprocess.run([sys.executable, "-m", "lima_jax.evaluate.pairwise", f"--ours={tmp_path / 'ours.jsonl'}",
                        f"--baseline={tmp_path / 'base.jsonl'}", f"--judge_checkpoint={judge_ckpt}",
                        f"--cache={tmp_path / 'cache.jsonl'}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["win"], summary["tie"], summary["loss"]) == (s["win"], s["tie"], s["loss"])
    assert summary["asked"] == 0  # all cached by the in-process run with the same judge


def test_a_judge_workdir_with_a_newer_step_is_a_new_judge(judge_ckpt, tmp_path):
    """The cache key named the path given: after the judge's workdir gained a step, reruns reused the
    old step's verdicts."""
    import shutil

    steps = tmp_path / "judge_run" / "checkpoints"
    shutil.copytree(judge_ckpt, steps / "10")
    ours = {r["id"]: r for r in (make_record(p, "answer one", "ours") for p in PROMPTS)}
    base = {r["id"]: r for r in (make_record(p, "another answer", "base") for p in PROMPTS)}
    cache = JudgmentCache(tmp_path / "cache.jsonl")
    first = LocalJudge(str(tmp_path / "judge_run"))
    assert first.name == f"local:{steps / '10'}"
    assert judge_pairwise(ours, base, first, cache, progress=False).stats.asked == 6
    shutil.copytree(judge_ckpt, steps / "20")
    newer = LocalJudge(str(tmp_path / "judge_run"))
    assert newer.name == f"local:{steps / '20'}"
    assert judge_pairwise(ours, base, newer, cache, progress=False).stats.asked == 6  # asked again, not reused


def test_the_likert_score_is_the_most_likely_digit_opening_the_answer(judge_ckpt, tmp_path):
    from lima_jax.evaluate.judge.factory import make_judge
    from lima_jax.evaluate.judge.prompts import LIKERT_CHOICES, LIKERT_LINE, likert_messages
    from lima_jax.evaluate.protocols.likert import judge_likert

    judge = make_judge(judge_checkpoint=str(judge_ckpt), judge_url=None, judge_model=None, answer=LIKERT_LINE)
    messages = likert_messages(PROMPTS[0], "4")
    choice, raw = judge.verdict(messages, LIKERT_CHOICES)
    scores = json.loads(raw)["logprobs"]
    assert set(scores) == set(LIKERT_CHOICES) and choice == max(scores, key=scores.get)
    # The scores by hand: the log-probability of each digit's tokens right after the prompt, no "Verdict:".
    assert judge.answer_prefix == ""
    assert scores == pytest.approx(by_hand(judge, messages, LIKERT_CHOICES), abs=1e-4)

    responses = {r["id"]: r for r in (make_record(p, "an answer", "ours") for p in PROMPTS)}
    s = judge_likert(responses, judge, JudgmentCache(tmp_path / "likert.jsonl"), progress=False).summary
    assert (s["scored"], s["failed"], s["asked"]) == (3, 0, 3)


def test_the_prompt_is_run_once_and_every_choice_scored_from_its_cache(judge_ckpt, monkeypatch):
    """The Likert prompt (about 1,500 tokens) was scored as six full rows, one per digit, and Fail/Pass/Excellent
    still took a full row each. Now the prompt runs once, as one row, and each choice's remaining tokens run
    against its KV cache: the scores are those of a full forward pass per choice, for choices of one token
    (letters, digits), of several, and one that is the start of another ("Pas", "Pass")."""
    from lima_jax.evaluate.judge import local as local_judge
    from lima_jax.evaluate.judge.prompts import ABSOLUTE_CHOICES, LIKERT_CHOICES, LIKERT_LINE, absolute_messages, likert_messages

    judge = LocalJudge(str(judge_ckpt))
    likert = make_judge(judge_checkpoint=str(judge_ckpt), judge_url=None, judge_model=None, answer=LIKERT_LINE)
    calls = []
    score = local_judge._score
    monkeypatch.setattr(local_judge, "_score", lambda graphdef, state, context, *rest: calls.append(
        (context.shape[0], rest[-2].shape)) or score(graphdef, state, context, *rest))
    cases = [(judge, pairwise_messages(PROMPTS[0], "4", "5"), ["A", "B", "C"], (3, 0)),
             (likert, likert_messages(PROMPTS[0], "4"), LIKERT_CHOICES, (6, 0)),
             # "Fail" is [▁, F, a, il] and "Excellent" [▁, E, x, c, el, le, n, t]: six tokens past the first.
             (judge, absolute_messages(PROMPTS[0], "4"), ABSOLUTE_CHOICES, (3, 6)),
             (judge, absolute_messages(PROMPTS[1], "red"), ["Pas", "Pass"], (2, 1))]  # [▁, P, as] and [▁, P, as, s]
    for j, messages, choices, suffixes in cases:
        calls.clear()
        scores = j.choice_logprobs(messages, choices)
        assert calls == [(1, suffixes)]  # one call, the prompt in one row
        assert scores == pytest.approx(by_hand(j, messages, choices), abs=1e-4)


@pytest.fixture(scope="module")
def other_judge_ckpt(tmp_path_factory):
    """A checkpoint of the same shape as `judge_ckpt`, with other weights."""
    return converted_checkpoint(tmp_path_factory.mktemp("other_judge"), 513, seed=1, max_len=2048)


def test_a_second_checkpoint_of_the_same_shape_compiles_nothing_and_scores_with_its_own_weights(
        judge_ckpt, other_judge_ckpt):
    """The judge's jitted forward closed over the model, so every weight was a constant of its program: XLA
    spent seconds folding them ("Constant folding an instruction is taking > 1s") and every checkpoint
    compiled programs of its own. The weights are arguments now: a second checkpoint reuses the first's
    programs, tracing nothing, and its scores are its own."""
    messages = pairwise_messages(PROMPTS[0], "4", "5")
    first = LocalJudge(str(judge_ckpt)).choice_logprobs(messages, ["A", "B", "C"])
    second = LocalJudge(str(other_judge_ckpt))
    traced = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traced.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        scores = second.choice_logprobs(messages, ["A", "B", "C"])
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert traced == []
    assert scores == pytest.approx(by_hand(second, messages, ["A", "B", "C"]), abs=1e-4)
    assert all(abs(scores[c] - first[c]) > 1e-2 for c in scores)  # not the first checkpoint's weights


def test_a_judgment_whose_prompt_does_not_fit_the_judges_context_is_a_failure(judge_ckpt, tmp_path, capsys):
    """A prompt longer than the judge's context (1,521 tokens against max_len 512) was scored silently, past
    every position the model knows; the server refuses it with a 400. It is a failed judgment now, recorded
    with its reason, counted and reported like an unreadable verdict."""
    from lima_jax.evaluate.judge.prompts import LIKERT_LINE
    from lima_jax.evaluate.protocols.likert import judge_likert

    judge = make_judge(judge_checkpoint=str(judge_ckpt), judge_url=None, judge_model=None, answer=LIKERT_LINE)
    responses = {r["id"]: r for r in (make_record(PROMPTS[0], "four", "ours"),
                                      make_record(PROMPTS[1], "red " * 2100, "ours"))}  # over 2,048 tokens
    cache = JudgmentCache(tmp_path / "likert.jsonl")
    result = judge_likert(responses, judge, cache, progress=False)
    assert (result.summary["scored"], result.summary["failed"], result.stats.failed) == (1, 1, 1)
    [failed] = [r for r in cache.records if r["verdict"] is None]
    assert failed["prompt_id"] == make_record(PROMPTS[1], "", "ours")["id"]
    assert "2048" in failed["error"] and "context" in failed["error"]
    assert f"judgment failed: {failed['error']}" in capsys.readouterr().err


def test_a_judging_prompt_is_padded_by_a_quarter_at_most_with_four_widths_per_doubling():
    """Rows were padded to the next power of two: a 1,100-token prompt ran as 2,048 columns."""
    from lima_jax.evaluate.judge.local import _width

    widths = {n: _width(n, 4096) for n in range(100, 4097)}
    assert all(n <= w <= n * 1.25 for n, w in widths.items())
    assert sorted({w for n, w in widths.items() if 1024 < n <= 2048}) == [1280, 1536, 1792, 2048]
    assert _width(1500, 1500) == 1500  # never past the context
