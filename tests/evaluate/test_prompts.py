"""The judging prompts and the strict verdict parser."""
import pytest

from lima_jax.evaluate.judge.prompts import (ABSOLUTE_CHOICES, PAIRWISE_CHOICES, absolute_messages, pairwise_messages,
                                       parse_verdict)


@pytest.mark.parametrize("text,expected", [
    ("Response A is clearer.\nVerdict: A", "A"),
    ("reasons\n\n   verdict :   b   \n\n", "B"),
    ("**Verdict:** C", "C"),
    ("**Verdict: A**", "A"),
    ("Verdict: [B].", "B"),
    ("VERDICT: c", "C"),
    ("Verdict: A or B", None),  # hedged
    ("The verdict is A", None),  # not the required form
    ("Verdict: A\nOn reflection, B is better.", None),  # the verdict must be the last line
    ("Verdict: D", None),  # not a choice
    ("Verdict: <A, B or C>", None),  # the template echoed back
    ("Verdict:", None),
    ("", None),
    (None, None),
])
def test_pairwise_verdicts(text, expected):
    assert parse_verdict(text, PAIRWISE_CHOICES) == expected


@pytest.mark.parametrize("text,expected", [
    ("It does what was asked.\nVerdict: Pass", "Pass"),
    ("Verdict: excellent", "Excellent"),
    ("verdict: FAIL.", "Fail"),
    ("Verdict: Good", None),
    ("Verdict: A", None),
])
def test_absolute_verdicts(text, expected):
    assert parse_verdict(text, ABSOLUTE_CHOICES) == expected


def test_pairwise_prompt_shows_the_request_and_both_answers_in_order():
    system, user = pairwise_messages(["How do I boil an egg?"], "ANSWER-ONE", "ANSWER-TWO")
    assert system["role"] == "system" and user["role"] == "user"
    text = user["content"]
    assert text.index("How do I boil an egg?") < text.index("ANSWER-ONE") < text.index("ANSWER-TWO")
    assert "super-intelligent AI assistant" in text
    for line in ("A: Response A is significantly better.", "B: Response B is significantly better.",
                 "C: Neither response is significantly better"):
        assert line in text
    assert text.rstrip().endswith("Verdict: <A, B or C>")


def test_dialogue_and_absolute_prompts():
    user = absolute_messages(["hi", "hello, how can I help?", "name a prime"], "7")[1]["content"]
    assert "User: hi\nAssistant: hello, how can I help?\nUser: name a prime" in user
    for rating in ABSOLUTE_CHOICES:
        assert f"{rating}: the response" in user
    assert user.rstrip().endswith("Verdict: <Fail, Pass or Excellent>")
