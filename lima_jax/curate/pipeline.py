"""One curation run: a source's candidates -> test overlap and duplicates out -> sampling -> the JSONL
file (LIMA's format plus `meta`) and its report beside it."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Mapping

from lima_jax.curate import sampling
from lima_jax.curate.report import Report
from lima_jax.errors import LimaError, namer
from lima_jax.storage.paths import Path, check_writable, user_path, write_atomically

SOURCES = ("stackexchange", "stackexchange_dialogues", "wikihow", "reddit")
SHARED_RULES = {
    "test_overlap": f"the prompt shares a {sampling.EXCLUDE_N}-word sequence with a prompt of --exclude "
                    f"(a prompt of fewer words: all its words)",
    "duplicate": "the prompt's words are those of a better-ranked candidate's prompt",
    "not_sampled": "passed every rule but was not drawn (--num_examples)",
}


@dataclasses.dataclass(frozen=True)
class Options:
    """What a run is asked for (the flags of `python -m lima_jax.curate`)."""

    source: str
    inputs: tuple[str, ...]
    output: str
    num_examples: int | None = None
    filters: str = "paper"  # or "none"
    seed: int = 0
    exclude: tuple[str, ...] = ()
    overwrite: bool = False
    temperature: float = 3.0
    title_ratio: float = 0.5
    exchanges: str | None = None
    reference_phrases: str | None = None
    categories: str | None = None
    subreddit: str = "writingprompts"

    def check(self, names: Mapping[str, str] | None = None) -> None:
        """Refuses a bad option, named as `errors.namer` names it."""
        name = namer(names)
        if not self.source:
            raise LimaError(f"{name('source')} is required ({', '.join(SOURCES)})")
        if self.source not in SOURCES:
            raise LimaError(f"{name('source')}={self.source}: expected one of {', '.join(SOURCES)}")
        if not self.inputs:
            raise LimaError(f"{name('inputs')} is required")
        if not self.output:
            raise LimaError(f"{name('output')} is required")
        if self.filters not in ("paper", "none"):
            raise LimaError(f"{name('filters')}={self.filters}: expected paper or none")
        if self.num_examples is not None and self.num_examples < 1:
            raise LimaError(f"{name('num_examples')} must be positive, got {self.num_examples}")
        if not 0.0 <= self.title_ratio <= 1.0:
            raise LimaError(f"{name('title_ratio')} must be between 0 and 1, got {self.title_ratio}")
        if not (self.temperature > 0 or math.isinf(self.temperature)):
            raise LimaError(f"{name('temperature')} must be positive, got {self.temperature}")

    def settings(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items() if k != "overwrite"}


def report_path(output: Path) -> Path:
    return output.with_name(output.name + ".report.json")


def curate(opts: Options, say: Callable[[str], None] = print, names: Mapping[str, str] | None = None) -> Report:
    """Runs the curation `opts` asks for; writes the output and its report; returns the report. Errors
    name an option as `namer(names)` does."""
    opts.check(names)
    output, name = user_path(opts.output), namer(names)
    for path in (output, report_path(output)):
        if path.exists() and not opts.overwrite:
            raise LimaError(f"{name('output')}: {path} already exists; choose a new path (or pass {name('overwrite')})")
    check_writable(output.parent, name("output"))  # every input and output checked before hours of parsing
    if not opts.source.startswith("stackexchange"):  # (stackexchange checks its sites, folders included, the same way)
        for given in opts.inputs:
            if not user_path(given).is_file():
                raise LimaError(f"{given}: no such file")
    exclude = sampling.exclusion_grams(opts.exclude) if opts.exclude else set()
    filtered = opts.filters == "paper"
    if opts.source == "stackexchange":
        from lima_jax.curate import stackexchange as source
        from lima_jax.curate import text

        rules = source.Rules(filtered=filtered, title_ratio=opts.title_ratio, seed=opts.seed,
                             reference_phrases=text.load_phrases(opts.reference_phrases))
        report = Report(opts.source, {**source.RULES, **SHARED_RULES}, opts.settings())
        candidates = source.candidates(list(opts.inputs), rules, report, opts.exchanges)
        temperature = opts.temperature
    elif opts.source == "stackexchange_dialogues":
        from lima_jax.curate import stackexchange_dialogues as source
        from lima_jax.curate import text

        rules = source.DialogueRules(filtered=filtered, reference_phrases=text.load_phrases(opts.reference_phrases))
        report = Report(opts.source, {**source.RULES, **SHARED_RULES}, opts.settings())
        candidates = source.candidates(list(opts.inputs), rules, report, opts.exchanges)
        temperature = opts.temperature
    elif opts.source == "wikihow":
        from lima_jax.curate import wikihow as source

        report = Report(opts.source, {**source.RULES, **SHARED_RULES}, opts.settings())
        candidates = source.candidates(list(opts.inputs), report, seed=opts.seed, categories=opts.categories)
        temperature = math.inf if opts.categories else opts.temperature  # a category first: uniform over them
    else:
        from lima_jax.curate import reddit as source

        report = Report(opts.source, {**source.rules(opts.subreddit), **SHARED_RULES}, opts.settings())
        candidates = source.candidates(list(opts.inputs), report, subreddit=opts.subreddit, filtered=filtered)
        temperature = opts.temperature
    candidates = sampling.drop_overlap_and_duplicates(candidates, report, exclude)
    chosen = sampling.sample(candidates, opts.num_examples, temperature, opts.seed, report)
    lines = "".join(json.dumps(c.record(), ensure_ascii=False) + "\n" for c in chosen)
    write_atomically(output, lines)
    write_atomically(report_path(output), report.dumps())
    say(report.table())
    say(f"wrote {len(chosen)} records to {opts.output} and the counts to {report_path(output).name}")
    if opts.num_examples is not None and len(chosen) < opts.num_examples:
        say(shortfall(report, opts.num_examples))
    return report


def shortfall(report: Report, asked: int) -> str:
    """The warning for fewer records than asked for: every candidate that passed was written, so the
    rules that removed the others say why."""
    total = report.totals()
    removed = ", ".join(f"{rule} {total[rule]}" for rule in report.rules if total[rule])
    why = f" (removed: {removed})" if removed else ""
    return (f"warning: wrote {total['written']} of the {asked} records asked for (--num_examples): only "
            f"{total['written']} of the {total['candidates']} candidates passed the rules{why}")
