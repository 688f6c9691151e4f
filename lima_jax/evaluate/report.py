r"""The evaluation report: win/tie/loss rates per baseline with bootstrap intervals, a chart in the
style of LIMA's Figure 1, the absolute-rating distribution, and the mean Likert score per arm (a
chart in the style of Figure 5), all from judgment caches.

    python -m lima_jax.evaluate.report --out_dir=report \
        --pairwise="Alpaca 65B=alpaca_judgments.jsonl,GPT-4=gpt4_judgments.jsonl" \
        --absolute=absolute_judgments.jsonl \
        --likert="Filtered SE=se_filtered_likert.jsonl,wikiHow=wikihow_likert.jsonl"

Writes report.md (also printed), report.json, pairwise.png, absolute.png and likert.png to --out_dir
(`lima_jax.evaluate.tables`); an existing report there is refused unless --overwrite. Per
baseline it also gives the ties told apart (the judge said neither / the orders disagreed), the
share of prompts whose two orders agree, each side's response lengths, a length-controlled win
rate (AlpacaEval 2's regression, `lima_jax.evaluate.stats`) and, with --human_labels, the judge's
agreement with human labels. Imports no JAX.
"""
from __future__ import annotations

from absl import flags

from lima_jax.cli import no_arguments, run
from lima_jax.errors import LimaError
from lima_jax.evaluate.cli import parse_pairwise_flag
from lima_jax.evaluate.labels import read_human_labels
from lima_jax.evaluate.protocols.absolute import absolute_distribution
from lima_jax.evaluate.protocols.likert import likert_arms
from lima_jax.evaluate.protocols.pairwise import pairwise_distribution, response_lengths
from lima_jax.evaluate.tables import existing_report, write_report

_PAIRWISE = flags.DEFINE_string("pairwise", None, "pairwise judgment caches, one per baseline: NAME=PATH[,NAME=PATH...]")
_ABSOLUTE = flags.DEFINE_string("absolute", None, "an absolute-rating judgment cache")
_LIKERT = flags.DEFINE_string("likert", None, "Likert judgment caches (`evaluate.likert`), one per arm: NAME=PATH[,NAME=PATH...]")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "where report.md, report.json and the charts (pairwise.png, absolute.png, likert.png) go")
_OURS_NAME = flags.DEFINE_string("ours_name", "LIMA", "our model's name in the report (\"LIMA wins\")")
_JUDGE_MODEL = flags.DEFINE_string("judge_model", None, "use only this judge's judgments (needed when a cache holds several)")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "bootstrap resamples for the 95% intervals")
_SEED = flags.DEFINE_integer("seed", 0, "bootstrap seed")
_RESPONSES = flags.DEFINE_string("responses", None, "response files whose outputs were judged, comma-separated: "
                                 "lengths for caches judged before judgments recorded them (matched by output hash)")
_HUMAN_LABELS = flags.DEFINE_string("human_labels", None, "JSONL of human labels ({\"id\", \"baseline\", \"label\": "
                                    "win|tie|loss}): the judge's agreement with them (lima_jax.evaluate.labels)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace a report already in --out_dir (refused otherwise)")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not _OUT_DIR.value:
        raise LimaError("--out_dir is required")
    if not _PAIRWISE.value and not _ABSOLUTE.value and not _LIKERT.value:
        raise LimaError("give --pairwise=NAME=CACHE[,...], --absolute=CACHE and/or --likert=NAME=CACHE[,...]")
    if _BOOTSTRAP.value < 1:
        raise LimaError(f"--bootstrap={_BOOTSTRAP.value}: must be at least 1")
    if not _OVERWRITE.value and (found := existing_report(_OUT_DIR.value)) is not None:  # before any work
        raise LimaError(f"{found} exists; pass --overwrite to replace the report")
    samples, seed, judge = _BOOTSTRAP.value, _SEED.value, _JUDGE_MODEL.value
    if _HUMAN_LABELS.value and not _PAIRWISE.value:
        raise LimaError("--human_labels needs --pairwise: the labels are scored against its verdicts")
    lengths = response_lengths([p.strip() for p in (_RESPONSES.value or "").split(",") if p.strip()])
    labels = read_human_labels(_HUMAN_LABELS.value) if _HUMAN_LABELS.value else None
    comparisons = [pairwise_distribution(name, path, judge, samples, seed, lengths, labels)
                   for name, path in parse_pairwise_flag(_PAIRWISE.value or "")]
    if labels is not None and not any(d.audit.human for d in comparisons):
        baselines = sorted({lb.baseline for lb in labels})
        raise LimaError(f"{_HUMAN_LABELS.value}: no label names a baseline in --pairwise (labels name "
                        f"{', '.join(baselines)}; the caches judged "
                        f"{', '.join(d.audit.baseline for d in comparisons)})")
    ratings = None
    if _ABSOLUTE.value:
        ratings = absolute_distribution(_OURS_NAME.value, _ABSOLUTE.value, judge, samples, seed)
    arms = likert_arms(parse_pairwise_flag(_LIKERT.value or "", "likert"), judge, samples, seed)
    print(write_report(_OUT_DIR.value, comparisons, ratings, _OURS_NAME.value, samples, seed, _OVERWRITE.value,
                       _HUMAN_LABELS.value, arms))


if __name__ == "__main__":
    run(main)
