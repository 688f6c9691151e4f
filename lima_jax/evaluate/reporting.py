r"""The evaluation report: win/tie/loss rates per baseline with bootstrap intervals, a chart in the
style of LIMA's Figure 1, and the absolute-rating distribution, all from judgment caches (the
library behind `python -m lima_jax.evaluate.report`).

Writes report.md (also printed), report.json, pairwise.png and absolute.png to --out_dir.
Percentages are of the prompts with a verdict; prompts whose judgment failed (or was never made)
are excluded and counted separately, never as ties. Intervals are percentile bootstraps that
resample prompts (seeded, so a report is reproducible).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

import numpy as np

from lima_jax.errors import LimaError
from lima_jax.evaluate import comparisons as pairwise, ratings as absolute
from lima_jax.evaluate.judging import JudgmentCache
from lima_jax.storage.paths import Path, PathLike, user_path, write_atomically

Interval = tuple[float, float]

_PAIR_COLORS = ("#3f7fbf", "#c8c8c8", "#e8833a")  # wins, tie, loses
_RATING_COLORS = ("#d9534f", "#f0ad4e", "#5cb85c")  # Fail, Pass, Excellent


def bootstrap_intervals(labels: Sequence[str], categories: Sequence[str], samples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, Interval]:
    """Percentile-bootstrap intervals (in percent) of each category's share, resampling the labels
    (one per prompt) with replacement. Empty input gives NaN intervals."""
    if not labels:
        return {c: (math.nan, math.nan) for c in categories}
    index = {c: i for i, c in enumerate(categories)}
    codes = np.array([index[label] for label in labels])
    draws = codes[np.random.default_rng(seed).integers(0, len(codes), size=(samples, len(codes)))]
    tail = 100 * (1 - level) / 2
    out = {}
    for i, c in enumerate(categories):
        shares = 100.0 * (draws == i).mean(axis=1)
        lo, hi = np.percentile(shares, [tail, 100 - tail])
        out[c] = (float(lo), float(hi))
    return out


@dataclasses.dataclass
class Distribution:
    """Counts over `categories` for one comparison (or the ratings), with intervals."""

    name: str
    categories: tuple[str, ...]
    counts: dict[str, int]
    intervals: dict[str, Interval]
    excluded: int  # prompts with a failed or missing judgment
    judges: list[str]

    @property
    def total(self) -> int:
        return sum(self.counts[c] for c in self.categories)

    def pct(self, category: str) -> float:
        return 100.0 * self.counts[category] / self.total if self.total else math.nan

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "judged": self.total, "excluded": self.excluded, "judges": self.judges,
                "counts": self.counts, "pct": {c: round(self.pct(c), 2) for c in self.categories},
                "ci95": {c: [round(v, 2) for v in self.intervals[c]] for c in self.categories}}


def _distribution(name: str, labels: dict[str, str], categories: tuple[str, ...], judges: set[str],
                  samples: int, seed: int) -> Distribution:
    kept = [labels[k] for k in labels if labels[k] in categories]
    return Distribution(name, categories, {c: kept.count(c) for c in categories},
                        bootstrap_intervals(kept, categories, samples, seed), len(labels) - len(kept), sorted(judges))


def _load(path: str) -> JudgmentCache:
    if not Path(path).is_file():
        raise LimaError(f"{path}: no such file")
    return JudgmentCache(path)


def _check_judges(path: str, judges: set[str]) -> None:
    if len(judges) > 1:
        raise LimaError(f"{path} holds judgments from several judges ({', '.join(sorted(judges))}); "
                        "pick one with --judge_model")


def _check_one_pair(path: str, records: list) -> None:
    """One row of the report compares two generators: a cache that judged several pairs would be
    reported as one baseline, each prompt under its latest pair."""
    prompts: dict[tuple, set] = {}
    for r in records:
        prompts.setdefault((r.get("ours_generator"), r.get("baseline_generator")), set()).add(r.get("prompt_id"))
    if len(prompts) > 1:
        pairs = "; ".join(f"{o} vs {b}: {len(ids)} prompts" for (o, b), ids in sorted(prompts.items(), key=str))
        raise LimaError(f"{path} holds judgments of several pairs of generators ({pairs}); judge each baseline "
                        "into a --cache of its own")


def pairwise_distribution(name: str | None, path: str, judge: str | None = None, samples: int = 1000,
                          seed: int = 0) -> Distribution:
    cache = _load(path)
    results, judges = pairwise.results_from_records(cache.records, judge)
    if not results:
        raise LimaError(f"{path}: no pairwise judgments" + (f" by {judge}" if judge else ""))
    _check_judges(path, judges)
    _check_one_pair(path, [r for r in cache.records if r.get("kind") == "pairwise" and r.get("judge") in judges])
    if not name:  # default: the baseline's generator as recorded, else the file name
        recorded = [r.get("baseline_generator") for r in cache.records if r.get("kind") == "pairwise"]
        name = recorded[-1] if recorded and recorded[-1] else Path(path).stem
    labels = {pid: outcome for pid, (outcome, _) in results.items()}
    return _distribution(name, labels, pairwise.OUTCOMES, judges, samples, seed)


def absolute_distribution(name: str, path: str, judge: str | None = None, samples: int = 1000,
                          seed: int = 0) -> Distribution:
    results, judges = absolute.results_from_records(_load(path).records, judge)
    if not results:
        raise LimaError(f"{path}: no absolute judgments" + (f" by {judge}" if judge else ""))
    _check_judges(path, judges)
    return _distribution(name, results, absolute.RATINGS, judges, samples, seed)


def _cell(d: Distribution, c: str) -> str:
    if not d.total:
        return "n/a"
    lo, hi = d.intervals[c]
    return f"{d.pct(c):.1f}% [{lo:.1f}, {hi:.1f}]"


def markdown(comparisons: Sequence[Distribution], ratings: Distribution | None, ours: str, samples: int,
             seed: int) -> str:
    lines = [f"# {ours} evaluation", ""]
    method = f"95% intervals: percentile bootstrap over prompts ({samples} resamples, seed {seed})."
    if comparisons:
        judges = sorted({j for d in comparisons for j in d.judges})
        lines += [f"## Pairwise preference (judge: {', '.join(judges)})", "",
                  f"| Baseline | Prompts judged | {ours} wins | Tie | {ours} loses | Excluded |",
                  "|---|---:|---:|---:|---:|---:|"]
        for d in comparisons:
            lines.append(f"| {d.name} | {d.total} | " + " | ".join(_cell(d, c) for c in pairwise.OUTCOMES)
                         + f" | {d.excluded} |")
        excluded = sum(d.excluded for d in comparisons)
        lines += ["", "Each prompt was judged with the two answers in both orders; orders that disagree count as a "
                  "tie. Percentages are of the prompts judged.", method,
                  f"Excluded: {excluded} prompt{'s' if excluded != 1 else ''} in all with a failed or missing "
                  "judgment, not counted as ties.", ""]
    if ratings is not None:
        lines += [f"## Absolute rating of {ours} (judge: {', '.join(ratings.judges)})", "",
                  "| Rating | Count | Share |", "|---|---:|---:|"]
        for c in ratings.categories:
            lines.append(f"| {c} | {ratings.counts[c]} | {_cell(ratings, c)} |")
        lines += ["", f"Rated: {ratings.total} responses. " + method,
                  f"Excluded: {ratings.excluded} response{'s' if ratings.excluded != 1 else ''} with a failed or "
                  "missing judgment, not counted as any rating.", ""]
    return "\n".join(lines)


def stacked_bars(path: PathLike, rows: Sequence[Distribution], labels: Sequence[str], colors: Sequence[str],
                 xlabel: str) -> None:
    """Horizontal stacked bars, one per row, each segment labelled with its percentage (LIMA Fig. 1)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise LimaError("the report's charts need matplotlib: pip install matplotlib") from None
    # A Figure with an Agg canvas directly: no pyplot, so no global backend state or display needed.
    fig = Figure(figsize=(8, 1.2 + 0.55 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for category, label, color in zip(rows[0].categories, labels, colors):
        widths = np.array([d.pct(category) if d.total else 0.0 for d in rows])
        ax.barh(y, widths, left=left, color=color, label=label, height=0.6, edgecolor="white")
        for yi, (x0, w) in enumerate(zip(left, widths)):
            if w >= 4:  # narrower segments would not fit their label
                ax.text(x0 + w / 2, yi, f"{w:.0f}%", ha="center", va="center", fontsize=9)
        left += widths
    ax.set_yticks(y, [d.name for d in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(xlabel)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels), frameon=False)
    fig.tight_layout()
    with Path(path).open("wb") as f:  # a file object: matplotlib writes local paths only, this may be gs://
        fig.savefig(f, format="png", dpi=150)


REPORT_FILES = ("report.md", "report.json", "pairwise.png", "absolute.png")


def check_out_dir(out_dir: str, overwrite: bool = False) -> None:
    """Refuses a folder that already holds a report (any of its files) unless `overwrite`: a report
    is the record of a run's verdicts, and a second command pointed at the same folder by mistake
    must not replace it. Called before any work, and again by `write_report`."""
    out = user_path(out_dir)
    for name in REPORT_FILES:
        if not overwrite and (out / name).exists():
            raise LimaError(f"{out / name} exists; pass --overwrite to replace the report")


def write_report(out_dir: str, comparisons: Sequence[Distribution], ratings: Distribution | None,
                 ours: str = "LIMA", samples: int = 1000, seed: int = 0, overwrite: bool = False) -> str:
    """Writes report.md, report.json and the charts to `out_dir` (local or gs://); returns the Markdown.
    An existing report there is refused unless `overwrite`; then its files are all replaced or removed,
    so that the folder never mixes two reports."""
    check_out_dir(out_dir, overwrite)
    out = user_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:  # a chart the new report does not draw must not outlive the old one
        if (out / name).exists():
            (out / name).unlink()
    text = markdown(comparisons, ratings, ours, samples, seed)
    write_atomically(out / "report.md", text)
    summary = {"pairwise": [d.to_json() for d in comparisons], "absolute": ratings.to_json() if ratings else None,
               "bootstrap": {"samples": samples, "seed": seed}}
    write_atomically(out / "report.json", json.dumps(summary, indent=1))
    if comparisons:
        stacked_bars(out / "pairwise.png", comparisons, (f"{ours} wins", "Tie", f"{ours} loses"), _PAIR_COLORS,
                     "% of prompts")
    if ratings is not None:
        stacked_bars(out / "absolute.png", [ratings], absolute.RATINGS, _RATING_COLORS, "% of responses")
    return text


def parse_pairwise_flag(value: str) -> list[tuple[str | None, str]]:
    """`name=path,name=path` (or bare paths, named after the baseline's recorded generator)."""
    entries = []
    for item in filter(None, (s.strip() for s in value.split(","))):
        name, sep, path = item.partition("=")
        entries.append((name.strip(), path.strip()) if sep else (None, item))
    for name, path in entries:
        if not path or (name is not None and not name):
            raise LimaError(f"--pairwise: {value!r} should be NAME=PATH[,NAME=PATH...]")
    return entries
