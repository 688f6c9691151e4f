r"""Likert helpfulness, as in LIMA's ablations: each response scored 1-6 with the paper's Appendix D
template (`lima_jax.evaluate.protocols.likert`).

    python -m lima_jax.evaluate.likert --responses=lima.jsonl \
        --judge_url=https://api.openai.com/v1 --judge_model=gpt-3.5-turbo --cache=likert_judgments.jsonl

Takes the judge flags of `absolute` (an OpenAI-compatible endpoint, or --judge_checkpoint for a
local checkpoint, which scores the six digits by log-probability). Prints one summary JSON line
(the mean is of the scored responses; failures are counted apart, never scored). Imports no JAX
unless the judge is a local checkpoint.
"""
from __future__ import annotations

from absl import flags

from lima_jax.cli import no_arguments, run
from lima_jax.errors import LimaError
from lima_jax.evaluate.answers.formats import read_responses
from lima_jax.evaluate.cli import define_judge_flags, finish
from lima_jax.evaluate.judge.prompts import LIKERT_LINE
from lima_jax.evaluate.protocols.likert import judge_likert

_RESPONSES = flags.DEFINE_string("responses", None, "the response file to score (JSONL: id, prompt, output, generator)")
_JUDGE = define_judge_flags()


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not _RESPONSES.value:
        raise LimaError("--responses is required (a response file, JSONL)")
    responses = read_responses(_RESPONSES.value)  # bad input is found before a local judge loads
    cache = _JUDGE.cache()
    max_failures = _JUDGE.max_failures()
    judge = _JUDGE.judge(answer=LIKERT_LINE)
    result = judge_likert(responses, judge, cache, workers=_JUDGE.workers.value, max_failures=max_failures)
    finish(result.summary, result.stats, _JUDGE.out.value, result.results, "response", max_failures)


if __name__ == "__main__":
    run(main)
