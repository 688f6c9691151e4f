r"""Absolute rating, as in LIMA's analysis: is each response Fail, Pass or Excellent?
(`lima_jax.evaluate.protocols.absolute`)

    python -m lima_jax.evaluate.absolute --responses=lima.jsonl \
        --judge_url=https://api.openai.com/v1 --judge_model=gpt-4 --cache=absolute_judgments.jsonl

Prints one summary JSON line (percentages are of the rated responses). Imports no JAX unless the
judge is a local checkpoint.
"""
from __future__ import annotations

from absl import flags

from lima_jax.cli import no_arguments, run
from lima_jax.errors import LimaError
from lima_jax.evaluate.answers.formats import read_responses
from lima_jax.evaluate.cli import define_judge_flags, finish
from lima_jax.evaluate.protocols.absolute import judge_absolute

_RESPONSES = flags.DEFINE_string("responses", None, "the response file to rate (JSONL: id, prompt, output, generator)")
_QUESTIONS = flags.DEFINE_string("mt_bench_questions", None, "MT-Bench's question.jsonl, when response files are "
                                 "MT-Bench answers (which hold no question text)")
_JUDGE = define_judge_flags()


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not _RESPONSES.value:
        raise LimaError("--responses is required (a response file, JSONL)")
    judge = _JUDGE.judge()
    responses = read_responses(_RESPONSES.value, _QUESTIONS.value)
    max_failures = _JUDGE.max_failures()
    result = judge_absolute(responses, judge, _JUDGE.cache(), workers=_JUDGE.workers.value, max_failures=max_failures)
    finish(result.summary, result.stats, _JUDGE.out.value, result.results, "response", max_failures)


if __name__ == "__main__":
    run(main)
