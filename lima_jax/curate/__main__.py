r"""Curate LIMA-style training (or test) records from raw dumps, with the paper's rules (LIMA §2.1).

    python -m lima_jax.curate --source=stackexchange --input=dumps/math.stackexchange.com.7z,dumps/cooking.stackexchange.com.7z \
        --output=data/se.jsonl [--num_examples=400] [--filters=paper|none] [--seed=0] [--exclude=lima/test.jsonl]
    python -m lima_jax.curate --source=stackexchange_dialogues --input=dumps/cooking.stackexchange.com.7z \
        --output=data/dialogues.jsonl --num_examples=20
    python -m lima_jax.curate --source=wikihow --input=wikihowSep.csv --output=data/wikihow.jsonl [--categories=cats.tsv]
    python -m lima_jax.curate --source=reddit --input=WritingPrompts_submissions.zst,WritingPrompts_comments.zst \
        --output=data/wp.jsonl [--subreddit=writingprompts|askreddit]

Every record is `{"conversations": [prompt, response], "source": ..., "meta": {provenance}}` (AskReddit:
the prompt only, for a test set; Stack Exchange dialogues: question, answer, then the asker's follow-up comments
and the answerer's replies, `lima_jax.curate.stackexchange_dialogues`); `<output>.report.json` beside it says how many candidates each rule
removed, per exchange, category or subreddit. An existing output is refused unless --overwrite.
"""
from __future__ import annotations

from absl import flags

from lima_jax.cli import no_arguments, run
from lima_jax.log import say

_SOURCE = flags.DEFINE_enum("source", None, ["stackexchange", "stackexchange_dialogues", "wikihow", "reddit"],
                            "which kind of dump --input holds (stackexchange_dialogues: Posts.xml and Comments.xml)")
_INPUT = flags.DEFINE_list("input", None, "the dumps, comma-separated: Stack Exchange .7z archives, folders with Posts.xml "
                           "or a folder of archives; wikihowAll.csv / wikihowSep.csv; Pushshift .zst files")
_OUTPUT = flags.DEFINE_string("output", None, "the JSONL file to write (its report goes to OUTPUT.report.json)")
_NUM = flags.DEFINE_integer("num_examples", None, "how many records to draw (default: every candidate that passes); "
                            "Stack Exchange splits them evenly between the STEM and other groups")
_FILTERS = flags.DEFINE_enum("filters", "paper", ["paper", "none"], "none: the same sampling without the quality and "
                             "style filters (the ablation's unfiltered arm)")
_SEED = flags.DEFINE_integer("seed", 0, "seeds the sampling and the title/body choice of Stack Exchange prompts")
_EXCLUDE = flags.DEFINE_list("exclude", [], "test sets (JSONL) whose prompts no curated prompt may overlap")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing output and report")
_TEMPERATURE = flags.DEFINE_float("temperature", 3.0, "sampling across exchanges: p(exchange) ∝ n^(1/temperature)")
_TITLE_RATIO = flags.DEFINE_float("title_ratio", 0.5, "Stack Exchange: the fraction of prompts that are the question's title "
                                  "(the rest are its body)")
_EXCHANGES = flags.DEFINE_string("exchanges", None, "Stack Exchange: the site -> stem/other/dropped list "
                                 "(default: the shipped lima_jax/curate/exchanges.tsv)")
_PHRASES = flags.DEFINE_string("reference_phrases", None, "Stack Exchange: the phrases that mark an answer as referring to "
                               "others (default: the shipped lima_jax/curate/reference_phrases.txt)")
_CATEGORIES = flags.DEFINE_string("categories", None, "wikiHow: a CSV/TSV of title,category; then a category is drawn "
                                  "first (uniformly), then an article")
_SUBREDDIT = flags.DEFINE_enum("subreddit", "writingprompts", ["writingprompts", "askreddit"],
                               "reddit: WritingPrompts (title -> top comment, training) or AskReddit (titles only, a test set)")

FLAG_NAMES = {"inputs": "--input", **{name: f"--{name}" for name in (
    "source", "output", "filters", "num_examples", "title_ratio", "temperature", "overwrite")}}  # what errors call them


def main(argv: list[str]) -> None:
    no_arguments(argv)
    from lima_jax.curate.pipeline import Options, curate

    curate(Options(
        source=_SOURCE.value or "", inputs=tuple(_INPUT.value or ()), output=_OUTPUT.value or "",
        num_examples=_NUM.value, filters=_FILTERS.value, seed=_SEED.value, exclude=tuple(_EXCLUDE.value),
        overwrite=_OVERWRITE.value, temperature=_TEMPERATURE.value, title_ratio=_TITLE_RATIO.value,
        exchanges=_EXCHANGES.value, reference_phrases=_PHRASES.value, categories=_CATEGORIES.value,
        subreddit=_SUBREDDIT.value,
    ), say=say, names=FLAG_NAMES)


if __name__ == "__main__":
    run(main)
