"""The evaluation report's files: report.md (the tables, also printed), report.json and the charts, from
the rows `protocols` reads out of judgment caches. Percentages are of the prompts with a verdict; those
whose judgment failed (or was never made) are counted apart, never as ties.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from lima_jax.errors import LimaError
from lima_jax.evaluate import stats
from lima_jax.evaluate.charts import absolute_chart, likert_chart, pairwise_chart, save_png
from lima_jax.evaluate.protocols.likert import LikertScore
from lima_jax.evaluate.protocols.pairwise import OUTCOMES, PairAudit
from lima_jax.evaluate.stats import Distribution
from lima_jax.storage.paths import Path, PathLike, user_path, write_atomically

REPORT_FILES = ("report.md", "report.json", "pairwise.png", "absolute.png", "likert.png")


def _likert_markdown(arms: Sequence[LikertScore], samples: int, seed: int) -> list[str]:
    judges = sorted({j for a in arms for j in a.judges})
    lines = [f"## Likert helpfulness, 1-6 (judge: {', '.join(judges)})", "",
             "| Arm | Mean | 95% interval | n | Failures | Prompts |", "|---|---:|---:|---:|---:|---:|"]
    for a in arms:
        mean, ci = ("n/a", "n/a") if not a.n else (f"{a.mean:.2f}", f"[{a.ci_low:.2f}, {a.ci_high:.2f}]")
        lines.append(f"| {a.name} | {mean} | {ci} | {a.n} | {a.failures} | {a.prompts} |")
    failures = sum(a.failures for a in arms)
    lines += ["", "Each response scored 1-6 for helpfulness with LIMA's Appendix D template, the score read from the "
              "judge's last line (a local-checkpoint judge: its most likely digit); n counts the scored responses. "
              "95% intervals: percentile bootstrap of the mean over prompts, each with all its responses "
              f"({samples} resamples, seed {seed}).",
              f"Failures: {failures} response{'s' if failures != 1 else ''} in all whose judgment failed (an "
              "unreadable answer after the retries), not scored and not in the mean.", ""]
    return lines


def _cell(d: Distribution, c: str) -> str:
    if not d.total:
        return "n/a"
    lo, hi = d.intervals[c]
    return f"{d.pct(c):.1f}% [{lo:.1f}, {hi:.1f}]"


def _count_cell(d: Distribution, c: str) -> str:
    return "n/a" if not d.total else f"{_cell(d, c)} ({d.counts[c]})"


def _length_cell(a: PairAudit, side: str) -> str:
    stats = a.length_stats(side)
    return "n/a" if stats is None else f"{stats['mean']:.0f} / {stats['median']:.0f}"


def _audit_markdown(comparisons: Sequence[Distribution], ours: str, human_labels: str | None) -> list[str]:
    rows = [d for d in comparisons if d.audit is not None]
    if not rows:
        return []
    lines = ["### Ties, position consistency and response length", "",
             f"| Baseline | Tie: the judge said neither | Tie: the orders disagreed | Orders agree "
             f"| {ours} length, mean / median | Baseline length, mean / median |", "|---|---:|---:|---:|---:|---:|"]
    for d in rows:
        a = d.audit
        lines.append(f"| {d.name} | {_count_cell(a.split, 'tie_neither')} | {_count_cell(a.split, 'tie_disagreed')} | "
                     f"{_cell(a.consistency, 'agreed')} ({a.consistency.counts['agreed']}/{a.consistency.total}) | "
                     f"{_length_cell(a, 'ours')} | {_length_cell(a, 'baseline')} |")
    lines += ["", "A tie is either the judge saying neither answer is better in both orders, or the two orders "
              "disagreeing (position bias or noise); \"orders agree\" is the share of judged prompts whose two orders "
              f"gave the same verdict (position consistency). Lengths in {stats.LENGTH_UNIT}, over the prompts judged."]
    unmeasured = sum(d.audit.unmeasured for d in rows)
    if unmeasured:
        lines.append(f"Lengths unknown for {unmeasured} judged prompt{'s' if unmeasured != 1 else ''} (judged before "
                     "caches recorded lengths): give their response files with --responses to measure them; no "
                     "length-controlled win rate is given for a comparison with unmeasured prompts.")
    lines += ["", "### Length-controlled win rate", "",
              "| Baseline | Prompts | Win rate (ties half) | Length-controlled win rate | Length coefficient |",
              "|---|---:|---:|---:|---:|"]
    lines += _per_baseline(rows, "length_controlled", lambda d: f"{len(d.audit.lengths['ours'])} | n/a | n/a | n/a",
                           lambda lc: f"{lc.prompts} | {lc.win_rate:.1f}% [{lc.win_rate_ci[0]:.1f}, {lc.win_rate_ci[1]:.1f}] | "
                                      f"{lc.lc_win_rate:.1f}% [{lc.lc_ci[0]:.1f}, {lc.lc_ci[1]:.1f}] | {lc.length_coef:+.2f}")
    lines += ["", "AlpacaEval 2's regression (Dubois et al. 2024), without its instruction-difficulty term: a logistic "
              "regression of each prompt's preference (the mean of its two orders: win 1, tie 0.5, loss 0) on an "
              "intercept and tanh(length difference / its standard deviation), L2 penalty "
              f"{stats.RIDGE}; the length-controlled win rate is its prediction with the length term at zero. A "
              "positive length coefficient: the judge favours the longer answer. Intervals refit on each "
              "bootstrap resample of the prompts.", ""]
    if human_labels:
        lines += [f"### Agreement with human labels ({human_labels})", "",
                  "| Baseline | Labels | Prompts | Agreement | Same verdict | Exactly one tie | Labels not judged |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += _per_baseline(rows, "human", lambda d: "0 | 0 | n/a | 0 | 0 | 0",
                               lambda h: f"{h.labels} | {h.prompts} | "
                                         + ("n/a" if not h.labels else f"{h.agreement:.1f}% [{h.ci[0]:.1f}, {h.ci[1]:.1f}]")
                                         + f" | {h.same} | {h.half} | {h.unjudged}")
        lines += ["", "Tie-discounted accuracy, as LIMA measures agreement (§4): 1 when the judge and the label "
                  "agree, 0.5 when exactly one of them says tie, 0 otherwise; the judge's verdict is the prompt's "
                  "outcome above. Labels are matched to a baseline by its generator name.", ""]
    return lines


def _per_baseline(rows: Sequence[Distribution], part: str, absent: Callable[[Distribution], str],
                  cells: Callable[[Any], str]) -> list[str]:
    """One table row per baseline from its audit's `part`, or `absent(d)` where that part was not computed."""
    return [f"| {d.name} | {absent(d) if getattr(d.audit, part) is None else cells(getattr(d.audit, part))} |"
            for d in rows]


def markdown(comparisons: Sequence[Distribution], ratings: Distribution | None, ours: str, samples: int,
             seed: int, human_labels: str | None = None, likert_scores: Sequence[LikertScore] = ()) -> str:
    lines = [f"# {ours} evaluation", ""]
    method = f"95% intervals: percentile bootstrap over prompts ({samples} resamples, seed {seed})."
    if comparisons:
        judges = sorted({j for d in comparisons for j in d.judges})
        lines += [f"## Pairwise preference (judge: {', '.join(judges)})", "",
                  f"| Baseline | Prompts judged | {ours} wins | Tie | {ours} loses | Excluded |",
                  "|---|---:|---:|---:|---:|---:|"]
        for d in comparisons:
            lines.append(f"| {d.name} | {d.total} | " + " | ".join(_cell(d, c) for c in OUTCOMES)
                         + f" | {d.excluded} |")
        excluded = sum(d.excluded for d in comparisons)
        lines += ["", "Each prompt was judged with the two answers in both orders; orders that disagree count as a "
                  "tie. Percentages are of the prompts judged.", method,
                  f"Excluded: {excluded} prompt{'s' if excluded != 1 else ''} in all with a failed or missing "
                  "judgment, not counted as ties.", ""]
        lines += _audit_markdown(comparisons, ours, human_labels)
    if ratings is not None:
        lines += [f"## Absolute rating of {ours} (judge: {', '.join(ratings.judges)})", "",
                  "| Rating | Count | Share |", "|---|---:|---:|"]
        for c in ratings.categories:
            lines.append(f"| {c} | {ratings.counts[c]} | {_cell(ratings, c)} |")
        lines += ["", f"Rated: {ratings.total} responses. " + method,
                  f"Excluded: {ratings.excluded} response{'s' if ratings.excluded != 1 else ''} with a failed or "
                  "missing judgment, not counted as any rating.", ""]
    if likert_scores:
        lines += _likert_markdown(likert_scores, samples, seed)
    return "\n".join(lines)


def existing_report(out_dir: PathLike) -> Path | None:
    """The first file of a report already in `out_dir`, if any: a report is the record of a run's
    verdicts, and a second command pointed at the same folder by mistake must not replace it."""
    out = user_path(out_dir)
    return next((out / name for name in REPORT_FILES if (out / name).exists()), None)


def write_report(out_dir: str, comparisons: Sequence[Distribution], ratings: Distribution | None,
                 ours: str = "LIMA", samples: int = 1000, seed: int = 0, overwrite: bool = False,
                 human_labels: str | None = None, likert_scores: Sequence[LikertScore] = ()) -> str:
    """Writes report.md, report.json and the charts to `out_dir` (local or gs://); returns the Markdown.
    An existing report there is refused unless `overwrite`; then its files are all replaced or removed,
    so that the folder never mixes two reports."""
    if not overwrite and (found := existing_report(out_dir)) is not None:
        raise LimaError(f"{found} exists: the report there is kept")
    out = user_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:  # a chart the new report does not draw must not outlive the old one
        if (out / name).exists():
            (out / name).unlink()
    text = markdown(comparisons, ratings, ours, samples, seed, human_labels, likert_scores)
    write_atomically(out / "report.md", text)
    summary = {"pairwise": [d.to_json() for d in comparisons], "absolute": ratings.to_json() if ratings else None,
               "likert": [a.to_json() for a in likert_scores],
               "bootstrap": {"samples": samples, "seed": seed}, "human_labels": human_labels}
    write_atomically(out / "report.json", json.dumps(summary, indent=1))
    if comparisons:
        save_png(pairwise_chart(comparisons, ours), out / "pairwise.png")
    if ratings is not None:
        save_png(absolute_chart(ratings, ours), out / "absolute.png")
    if likert_scores:
        save_png(likert_chart(likert_scores), out / "likert.png")
    return text
