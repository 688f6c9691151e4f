r"""Pairwise judging, as in LIMA's preference study: for every prompt answered in both files, which
answer does the judge prefer? Each pair is judged in both orders (`lima_jax.evaluate.protocols.pairwise`).

    python -m lima_jax.evaluate.pairwise --ours=lima.jsonl --baseline=alpaca.jsonl \
        --judge_url=https://api.openai.com/v1 --judge_model=gpt-4 --cache=alpaca_judgments.jsonl

Prints one summary JSON line (percentages are of the prompts judged in both orders). Imports no JAX
unless the judge is a local checkpoint.
"""
from __future__ import annotations

from absl import flags

from lima_jax.cli import no_arguments, run
from lima_jax.errors import LimaError
from lima_jax.evaluate.answers.formats import read_responses
from lima_jax.evaluate.cli import define_judge_flags, finish
from lima_jax.evaluate.protocols.pairwise import judge_pairwise

_OURS = flags.DEFINE_string("ours", None, "our response file (JSONL: id, prompt, output, generator)")
_BASELINE = flags.DEFINE_string("baseline", None, "the baseline's response file, same format")
_QUESTIONS = flags.DEFINE_string("mt_bench_questions", None, "MT-Bench's question.jsonl, when response files are "
                                 "MT-Bench answers (which hold no question text)")
_JUDGE = define_judge_flags()


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not _OURS.value or not _BASELINE.value:
        raise LimaError("--ours and --baseline are required (response files, JSONL)")
    judge = _JUDGE.judge()
    ours, baseline = read_responses(_OURS.value, _QUESTIONS.value), read_responses(_BASELINE.value, _QUESTIONS.value)
    max_failures = _JUDGE.max_failures()
    result = judge_pairwise(ours, baseline, judge, _JUDGE.cache(), workers=_JUDGE.workers.value, max_failures=max_failures)
    outcomes = {pid: outcome for pid, (outcome, _) in result.results.items()}
    finish(result.summary, result.stats, _JUDGE.out.value, outcomes, "prompt", max_failures)


if __name__ == "__main__":
    run(main)
