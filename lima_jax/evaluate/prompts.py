"""The judging prompts (our own wording of LIMA's annotator instructions) and the verdict parser.

Pairwise follows the paper's human study: which of two responses better serves someone asking a
super-intelligent AI assistant for help, with a tie allowed. Absolute is the paper's
Fail / Pass / Excellent rating. Both end with a line `Verdict: X`, which `parse_verdict` reads
strictly: anything else is "no verdict", never a guess.
"""
from __future__ import annotations

import re
from typing import Sequence

Messages = list[dict[str, str]]

PAIRWISE_CHOICES = ("A", "B", "C")
ABSOLUTE_CHOICES = ("Fail", "Pass", "Excellent")

# Part of every cache key: rewording a prompt below must bump its version, so old judgments of
# the old wording are not mixed with new ones.
PAIRWISE_VERSION = "pairwise-v1"
ABSOLUTE_VERSION = "absolute-v1"

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


def pairwise_messages(turns: Sequence[str], response_a: str, response_b: str) -> Messages:
    user = _PAIRWISE.format(conversation=render_conversation(turns), a=response_a, b=response_b)
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def absolute_messages(turns: Sequence[str], response: str) -> Messages:
    user = _ABSOLUTE.format(conversation=render_conversation(turns), response=response)
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


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
