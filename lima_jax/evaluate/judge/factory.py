"""The one way to get a judge: a local checkpoint (`judge.local`, which loads JAX) or an
OpenAI-compatible endpoint (`judge.openai`), reading its choice from answers in a given format.
"""
from __future__ import annotations

import copy
from typing import Any

from lima_jax.errors import LimaError
from lima_jax.evaluate.judge.openai import OpenAIJudge
from lima_jax.evaluate.judge.prompts import VERDICT_LINE, AnswerFormat
from lima_jax.evaluate.judge.protocol import Judge


def make_judge(*, judge_checkpoint: str | None, judge_url: str | None, judge_model: str | None, workers: int = 1,
               answer: AnswerFormat = VERDICT_LINE, **client: Any) -> Judge:
    """A local-checkpoint judge or an OpenAI-compatible one (`client`: OpenAIJudge's keyword arguments)
    that reads its choice from answers in the `answer` format."""
    if workers < 1:
        raise LimaError(f"workers={workers}: must be at least 1")
    if judge_checkpoint:
        if judge_url:
            raise LimaError("give a judge checkpoint or a judge URL, not both")
        from lima_jax.evaluate.judge.local import LocalJudge  # JAX, only for a local judge

        return LocalJudge(judge_checkpoint, answer_prefix=answer.prefix)
    if not judge_url or not judge_model:
        raise LimaError("a judge URL and model (or a judge checkpoint) are required")
    return OpenAIJudge(judge_url, judge_model, parser=answer.parse, **client)


def with_answer_format(judge: Judge, answer: AnswerFormat) -> Judge:
    """The same judge reading answers in another format (a local judge's weights are shared, not
    loaded again): `evaluate.select` asks one judge both pairwise and Likert prompts."""
    other = copy.copy(judge)
    if isinstance(other, OpenAIJudge):
        other.parser = answer.parse
    elif hasattr(other, "answer_prefix"):  # a LocalJudge (its module imports JAX)
        other.answer_prefix = answer.prefix
    else:
        raise LimaError(f"judge {judge.name}: cannot change the format of its answers")
    return other
