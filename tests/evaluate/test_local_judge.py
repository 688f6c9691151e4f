"""A local lima_jax checkpoint as the judge: verdicts from the log-probabilities of the answers."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from lima_jax.evaluate.judging import JudgmentCache
from lima_jax.evaluate.local_judge import ANSWER_PREFIX, LocalJudge
from lima_jax.evaluate.comparisons import judge_pairwise
from lima_jax.evaluate.prompts import pairwise_messages
from lima_jax.evaluate.judging import make_judge
from lima_jax.evaluate.responses import make_record, write_responses

PROMPTS = [["What is 2 plus 2?"], ["Name a color."], ["Spell cat backwards."]]


def test_verdict_is_the_most_likely_answer(judge_ckpt):
    judge = LocalJudge(str(judge_ckpt))
    messages = pairwise_messages(PROMPTS[0], "4", "5")
    choice, raw = judge.verdict(messages, ["A", "B", "C"])
    scores = json.loads(raw)["logprobs"]
    assert choice == max(scores, key=scores.get) and set(scores) == {"A", "B", "C"}
    # The score of "A" by hand: the log-probability of its tokens after "Verdict:" in the answer.
    g, sp = judge.generator, judge.generator.tokenizer.text.sp  # sentencepiece itself
    head = sp.encode(ANSWER_PREFIX.rstrip())
    cont = sp.encode(ANSWER_PREFIX + "A")[len(head):]
    seq = judge._prefix(messages) + head + cont
    logp = np.asarray(jax.nn.log_softmax(g.model(np.asarray([seq]))[0], axis=-1))
    expected = sum(logp[len(seq) - len(cont) + j - 1, t] for j, t in enumerate(cont))
    assert scores["A"] == pytest.approx(expected, abs=1e-4)


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
    from lima_jax.evaluate.judging import make_judge
    from lima_jax.evaluate.prompts import LIKERT_CHOICES, LIKERT_LINE, likert_messages
    from lima_jax.evaluate.scores import judge_likert

    judge = make_judge(judge_checkpoint=str(judge_ckpt), judge_url=None, judge_model=None, answer=LIKERT_LINE)
    messages = likert_messages(PROMPTS[0], "4")
    choice, raw = judge.verdict(messages, LIKERT_CHOICES)
    scores = json.loads(raw)["logprobs"]
    assert set(scores) == set(LIKERT_CHOICES) and choice == max(scores, key=scores.get)
    # The score of "3" by hand: the log-probability of its tokens right after the prompt, no "Verdict:".
    g, sp = judge.generator, judge.generator.tokenizer.text.sp  # sentencepiece itself
    cont = sp.encode("3")
    seq = judge._prefix(messages) + cont
    logp = np.asarray(jax.nn.log_softmax(g.model(np.asarray([seq]))[0], axis=-1))
    expected = sum(logp[len(seq) - len(cont) + j - 1, t] for j, t in enumerate(cont))
    assert scores["3"] == pytest.approx(expected, abs=1e-4)

    responses = {r["id"]: r for r in (make_record(p, "an answer", "ours") for p in PROMPTS)}
    s = judge_likert(responses, judge, JudgmentCache(tmp_path / "likert.jsonl"), progress=False).summary
    assert (s["scored"], s["failed"], s["asked"]) == (3, 0, 3)


def test_choices_that_differ_in_their_last_token_share_one_row_of_the_forward_pass(judge_ckpt):
    """The Likert prompt (about 1,500 tokens) was scored as six full rows, one per digit, though all six share
    it: the letters and the digits (after a shared "▁") are read from one row; Fail/Pass/Excellent, which
    part after "▁", still take a row each. The scores are the ones computed row by row."""
    from lima_jax.evaluate.prompts import ABSOLUTE_CHOICES, LIKERT_CHOICES, LIKERT_LINE, absolute_messages, likert_messages

    judge = LocalJudge(str(judge_ckpt))
    likert = make_judge(judge_checkpoint=str(judge_ckpt), judge_url=None, judge_model=None, answer=LIKERT_LINE)
    rows = []
    for j in (judge, likert):
        forward = j._forward
        j._forward = lambda tokens, forward=forward: rows.append(tokens.shape[0]) or forward(tokens)
    cases = [(judge, pairwise_messages(PROMPTS[0], "4", "5"), ["A", "B", "C"], 1),
             (likert, likert_messages(PROMPTS[0], "4"), LIKERT_CHOICES, 1),
             (judge, absolute_messages(PROMPTS[0], "4"), ABSOLUTE_CHOICES, len(ABSOLUTE_CHOICES))]
    for j, messages, choices, expected_rows in cases:
        rows.clear()
        scores = j.choice_logprobs(messages, choices)
        assert rows == [expected_rows]
        g, sp = j.generator, j.generator.tokenizer.text.sp
        head = sp.encode(j.answer_prefix.rstrip())
        for choice in choices:
            cont = sp.encode(j.answer_prefix + choice)[len(head):]
            seq = j._prefix(messages) + head + cont
            logp = np.asarray(jax.nn.log_softmax(g.model(np.asarray([seq]))[0], axis=-1))
            expected = sum(logp[len(seq) - len(cont) + k - 1, t] for k, t in enumerate(cont))
            assert scores[choice] == pytest.approx(expected, abs=1e-4), choice
