"""The judging prompts and their answer parsers.

Pairwise follows the paper's human study: which of two responses better serves someone asking a
super-intelligent AI assistant for help, with a tie allowed. Absolute is the paper's
Fail / Pass / Excellent rating. Both are our own wording and end with a line `Verdict: X`, which
`parse_verdict` reads strictly: anything else is "no verdict", never a guess. Likert is the
paper's 1-6 helpfulness rating (its ablations, Appendix D), asked with the paper's template
verbatim; `parse_likert` reads the score from the answer's last non-empty line.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

from lima_jax.evaluate.judge.protocol import Messages

PAIRWISE_CHOICES = ("A", "B", "C")
ABSOLUTE_CHOICES = ("Fail", "Pass", "Excellent")
LIKERT_CHOICES = ("1", "2", "3", "4", "5", "6")

# Part of every cache key: rewording a prompt below must bump its version, so old judgments of
# the old wording are not mixed with new ones.
PAIRWISE_VERSION = "pairwise-v1"
ABSOLUTE_VERSION = "absolute-v1"
LIKERT_VERSION = "likert-appendix-d-v1"

_SYSTEM = (
    "You evaluate answers written by AI assistants. You are careful, fair, and not swayed by "
    "the length of an answer, its position, or its confident tone."
)

_PAIRWISE = """\
Someone has turned to a super-intelligent AI assistant for help. Below is what they asked, \
followed by two candidate responses. Your job: decide which response would better meet this \
person's needs.

{conversation}

<<<RESPONSE A>>>
{a}
<<<END OF RESPONSE A>>>

<<<RESPONSE B>>>
{b}
<<<END OF RESPONSE B>>>

Think about whether each response actually does what was asked, whether it is accurate, and \
whether it is useful, clear and safe. Prefer substance over length or polish, and ignore which \
response happens to come first.

Options:
A: Response A is significantly better.
B: Response B is significantly better.
C: Neither response is significantly better than the other (a tie).

Give a short justification, then finish with one last line of exactly this form:
Verdict: <A, B or C>"""

_ABSOLUTE = """\
Someone has turned to a super-intelligent AI assistant for help. Below is what they asked, \
followed by the assistant's response. Rate how well the response serves this person.

{conversation}

<<<RESPONSE>>>
{response}
<<<END OF RESPONSE>>>

Ratings:
Fail: the response does not meet what the request requires.
Pass: the response meets what the request requires.
Excellent: the response meets what the request requires, and does so excellently.

Judge whether it does what was asked, and whether it is accurate, useful, clear and safe; length \
alone earns nothing. Give a short justification, then finish with one last line of exactly this form:
Verdict: <Fail, Pass or Excellent>"""


def render_conversation(turns: Sequence[str]) -> str:
    """The request, and for a dialogue the turns before it, each labelled with its speaker."""
    if len(turns) == 1:
        return f"<<<REQUEST>>>\n{turns[0]}\n<<<END OF REQUEST>>>"
    lines = ["<<<CONVERSATION SO FAR>>>"]
    for i, turn in enumerate(turns):
        lines.append(f"{'User' if i % 2 == 0 else 'Assistant'}: {turn}")
    lines.append("<<<END OF CONVERSATION>>> (the responses below answer the last user turn)")
    return "\n".join(lines)


# A dialogue's later turns are rated in context (LIMA §6): the same three ratings, with what "the
# request requires" spelled out to include following the conversation so far.
ABSOLUTE_DIALOGUE_VERSION = "absolute-dialogue-v1"
_DIALOGUE_NOTE = (
    "This is a conversation: the response answers the last user turn, and it must also follow the "
    "conversation so far (what the user asked and said before, and what the assistant itself answered). "
    "A response that ignores, forgets or contradicts the conversation does not meet what the request requires."
)


def pairwise_messages(turns: Sequence[str], response_a: str, response_b: str) -> Messages:
    user = _PAIRWISE.format(conversation=render_conversation(turns), a=response_a, b=response_b)
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def absolute_messages(turns: Sequence[str], response: str) -> Messages:
    user = _ABSOLUTE.format(conversation=render_conversation(turns), response=response)
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def dialogue_absolute_messages(turns: Sequence[str], response: str) -> Messages:
    """The absolute prompt for a dialogue's turn; a first turn is asked as a single request."""
    messages = absolute_messages(turns, response)
    if len(turns) > 1:
        user = messages[-1]["content"]
        head, sep, tail = user.rpartition("\n\nRatings:\n")  # the last: a response may hold the word
        messages[-1] = {"role": "user", "content": f"{head}\n\n{_DIALOGUE_NOTE}{sep}{tail}"}
    return messages


# The last non-blank line must be `Verdict: X`; markdown emphasis, brackets, quotes and a final
# full stop around the parts are tolerated, as is any case. "Verdict: A or B" is not a verdict.
_VERDICT = re.compile(
    r"""^[\s*_#>`]*verdict[\s*_`]*[:\uff1a][\s*_`"'\[(<]*([a-z]+)[\s*_`"'\])>.!]*$""",
    re.IGNORECASE,
)


def parse_verdict(text: str | None, choices: Sequence[str]) -> str | None:
    """The choice (spelled as in `choices`) named on the last line `Verdict: X`, or None."""
    if not text:
        return None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    m = _VERDICT.match(lines[-1])
    if not m:
        return None
    by_lower = {c.lower(): c for c in choices}
    return by_lower.get(m.group(1).lower())


# LIMA's Appendix D, verbatim: the paper's typos ("the structured of the response") are kept, so
# that scores compare with its Figures 5 and 6. Filled with str.replace, not str.format: a task or
# submission may hold braces.
LIKERT_TEMPLATE = """\
You are evaluating a response that has been submitted for a particular task, using a specific set of standards. Below is the data:
[BEGIN DATA]
***
[Task]: {task}
***
[Submission]: {submission}
***
[Criterion]: helpfulness:
"1": "Not helpful - The generated text is completely irrelevant, unclear, or incomplete. It does not provide any useful information to the user."
"2": "Somewhat helpful - The generated text has some relevance to the user's question, but it may be unclear or incomplete. It provides only partial information, or the information provided may not be useful for the user's needs."
"3": "Moderately helpful - The generated text is relevant to the user's question, and it provides a clear and complete answer. However, it may lack detail or explanation that would be helpful for the user."
"4": "Helpful - The generated text is quite relevant to the user's question, and it provides a clear, complete, and detailed answer. It offers additional information or explanations that are useful for the user. However, some of the points of the response are somewhat repetitive or could be combined for greater clarity and concision"
"5": "Very helpful - The generated text is highly relevant to the user's question, and it provides a clear, complete, and detailed answer. It offers additional information, explanations, or analogies that are not only useful but also insightful and valuable to the user. However, the structured of the response is not well-organized and there is no clear progression or logical sequence of different points in the response."
"6": "Highly helpful - The generated text provides a clear, complete, and detailed answer. It offers additional information or explanations that are not only useful but also insightful and valuable to the user. The response is also in a logical and easy-to-follow manner by explicitly using headings, bullet points, or numbered lists to break up the information and make it easier to read."
***
[END DATA]
Does the submission meet the criterion? First, write out in a step by step manner your reasoning about the criterion to be sure that your conclusion is correct. Avoid simply stating the correct answers at the outset. Then print the choice only from "1, 2, 3, 4, 5, 6" (without quotes or punctuation) on its own line corresponding to the correct answer. At the end, repeat just the selected choice again by itself on a new line."""


def likert_task(turns: Sequence[str]) -> str:
    """The template's {task}: the request itself, or for a dialogue the turns before the response."""
    return turns[0] if len(turns) == 1 else render_conversation(turns)


def likert_messages(turns: Sequence[str], response: str) -> Messages:
    # One user message, as the paper gives no system prompt. {submission} is filled last, so a
    # task that happens to contain "{submission}" is not replaced by the response.
    user = LIKERT_TEMPLATE.replace("{task}", likert_task(turns), 1)
    head, sep, tail = user.rpartition("{submission}")
    return [{"role": "user", "content": head + response + tail}]


# The template asks for the choice "on its own line" and again "by itself on a new line" at the
# end: the last non-blank line must be one digit 1-6, with markdown emphasis, quotes, brackets or a
# full stop around it tolerated. "4/6", "Score: 4" or "4 or 5" are unreadable (retried), never a guess.
_LIKERT_LINE = re.compile(r"""^[\s*_#>`"'\[(]*([1-6])[\s*_`"'\])>.!]*$""")


def parse_likert(text: str | None, choices: Sequence[str] = LIKERT_CHOICES) -> str | None:
    """The score on the last non-empty line, as a string in `choices`, or None."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    m = _LIKERT_LINE.match(lines[-1]) if lines else None
    return m.group(1) if m and m.group(1) in choices else None


@dataclasses.dataclass(frozen=True)
class AnswerFormat:
    """How a judge's answer names its choice: `parse` reads a sampled answer (None: unreadable);
    a log-probability judge scores each choice as the continuation of `prefix` at the start of
    its answer (`lima_jax.evaluate.judge.local`)."""

    parse: Callable[[str | None, Sequence[str]], str | None]
    prefix: str


VERDICT_LINE = AnswerFormat(parse_verdict, "Verdict: ")  # pairwise and absolute
LIKERT_LINE = AnswerFormat(parse_likert, "")  # the score first: a local judge skips the reasoning
