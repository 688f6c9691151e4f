"""What a judge is: the one protocol every judge implements (answer a judging prompt with one of a
few choices), and its two ways of failing.

A judge never turns a failure into a verdict: when it cannot get a readable answer it raises
JudgeFailure, which is recorded as a failure (not a tie) and asked again on the next run.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from lima_jax.errors import LimaError

Messages = list[dict[str, str]]


class JudgeFailure(Exception):
    """No verdict for one judging prompt; `raw` is the judge's last output (or error body), if any."""

    def __init__(self, message: str, raw: str | None = None):
        super().__init__(message)
        self.raw = raw


class JudgeUnavailable(LimaError):
    """The judge cannot answer any prompt (bad key, URL or model): the run stops instead of
    recording the same failure for every prompt."""


@runtime_checkable
class Judge(Protocol):
    # Recorded in every judgment and part of its cache key: a different judge is asked afresh.
    name: str

    def verdict(self, prompt_messages: Messages, choices: Sequence[str]) -> tuple[str, str]:
        """Answers a judging prompt (chat messages, from `prompts`) with one of `choices`.

        Returns (the choice, spelled exactly as in `choices`; the raw judge output, kept in the
        cache for auditing). Raises JudgeFailure when no choice could be had; never guesses.
        The prompts ask for a last line `Verdict: X`, so a judge that reads log-probabilities can
        score each choice as the continuation of "Verdict: " after the assistant turn starts.
        """
        ...
