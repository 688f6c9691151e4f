r"""The evaluation report: win/tie/loss rates per baseline with bootstrap intervals, a chart in the
style of LIMA's Figure 1, the absolute-rating distribution, and the mean Likert helpfulness score
per arm (LIMA's ablations, a chart in the style of its Figure 5), all from judgment caches (the
library behind `python -m lima_jax.evaluate.report`).

Writes report.md (also printed), report.json, pairwise.png, absolute.png and likert.png to --out_dir, and
refuses a folder that holds a report unless told to overwrite it. Each baseline's row carries its
audit (`PairAudit`: the ties told apart, position consistency, lengths, the length-controlled win
rate, agreement with human labels; the statistics are in `lima_jax.evaluate.audit`).
Percentages are of the prompts with a verdict; prompts whose judgment failed (or was never made)
are excluded and counted separately, never as ties. Intervals are percentile bootstraps that
resample prompts (seeded, so a report is reproducible).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from typing import Any, Mapping, Sequence

import numpy as np

from lima_jax.errors import LimaError
from lima_jax.evaluate import audit, comparisons as pairwise, ratings as absolute, scores as likert
from lima_jax.evaluate.judging import JudgmentCache
from lima_jax.storage.paths import Path, PathLike, user_path, write_atomically

Interval = tuple[float, float]

_PAIR_COLORS = ("#3f7fbf", "#c8c8c8", "#e8833a")  # wins, tie, loses
_SPLIT_COLORS = ("#3f7fbf", "#c8c8c8", "#e4e4e4", "#e8833a")  # wins, tie (neither), tie (orders disagreed), loses
SPLIT = ("win", "tie_neither", "tie_disagreed", "loss")  # the ties told apart
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
    audit: PairAudit | None = None  # pairwise comparisons only

    @property
    def total(self) -> int:
        return sum(self.counts[c] for c in self.categories)

    def pct(self, category: str) -> float:
        return 100.0 * self.counts[category] / self.total if self.total else math.nan

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "judged": self.total, "excluded": self.excluded, "judges": self.judges,
               "counts": self.counts, "pct": {c: _round(self.pct(c)) for c in self.categories},
               "ci95": {c: [_round(v) for v in self.intervals[c]] for c in self.categories}}
        if self.audit is not None:
            out.update(self.audit.to_json())
        return out


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)  # strict JSON: no NaN


@dataclasses.dataclass
class PairAudit:
    """What lets a reader check a comparison's verdicts (`lima_jax.evaluate.audit`)."""

    ours: str  # the generators, as recorded in the cache
    baseline: str
    split: Distribution  # win / tie (the judge said neither) / tie (the orders disagreed) / loss
    consistency: Distribution  # agreed / disagreed: the share of judged prompts whose two orders agree
    lengths: dict[str, list[int]]  # "ours" / "baseline" -> per judged prompt, when known
    unmeasured: int  # judged prompts whose response lengths are unknown
    length_controlled: audit.LengthControlled | None
    human: audit.Agreement | None

    def length_stats(self, side: str) -> dict[str, float] | None:
        values = self.lengths[side]
        if not values:
            return None
        return {"mean": round(statistics.fmean(values), 1), "median": float(statistics.median(values))}

    def to_json(self) -> dict[str, Any]:
        split = self.split
        return {
            "generators": {"ours": self.ours, "baseline": self.baseline},
            "ties": {"judge_said_neither": split.counts["tie_neither"],
                     "orders_disagreed": split.counts["tie_disagreed"],
                     "pct": {c: _round(split.pct(c)) for c in ("tie_neither", "tie_disagreed")},
                     "ci95": {c: [_round(v) for v in split.intervals[c]] for c in ("tie_neither", "tie_disagreed")}},
            "position_consistency": {"agreed": self.consistency.counts["agreed"], "judged": self.consistency.total,
                                     "pct": _round(self.consistency.pct("agreed")),
                                     "ci95": [_round(v) for v in self.consistency.intervals["agreed"]]},
            "length": {"unit": audit.LENGTH_UNIT, "prompts": len(self.lengths["ours"]), "unmeasured": self.unmeasured,
                       "ours": self.length_stats("ours"), "baseline": self.length_stats("baseline")},
            "length_controlled": self.length_controlled.to_json() if self.length_controlled else None,
            "human_agreement": self.human.to_json() if self.human else None,
        }


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


def response_lengths(paths: Sequence[str]) -> dict[str, int]:
    """Output text hash -> length, from response files: lengths for caches judged before judgments
    recorded them (matched by hash, so only the very outputs that were judged count)."""
    from lima_jax.evaluate.responses import text_hash
    from lima_jax.evaluate.formats import read_responses

    return {text_hash(r["output"]): len(r["output"]) for path in paths for r in read_responses(path).values()}


def _side_length(record: dict, side: str, lengths: Mapping[str, int]) -> int | None:
    recorded = record.get(f"{side}_length")
    return recorded if isinstance(recorded, int) else lengths.get(str(record.get(f"{side}_hash")))


def pair_audit(chosen: Mapping[str, Mapping[str, dict | None]], ours: str, baseline: str, judges: set[str],
               lengths: Mapping[str, int], labels: Sequence[audit.HumanLabel] | None, samples: int,
               seed: int) -> PairAudit:
    """Position consistency, the ties told apart, lengths, the length-controlled win rate and the
    agreement with human labels, for one comparison's judgments (prompt -> order -> judgment)."""
    split: dict[str, str] = {}
    outcomes: dict[str, str] = {}
    preference, ours_len, base_len = [], [], []
    unmeasured = 0
    for pid, orders in chosen.items():
        outcome, agreed = pairwise.combine(dict(orders))
        outcomes[pid] = outcome
        if outcome not in pairwise.OUTCOMES:
            continue
        split[pid] = ("tie_neither" if agreed else "tie_disagreed") if outcome == "tie" else outcome
        record = orders[pairwise.ORDERS[0]]
        mine, theirs = _side_length(record, "ours", lengths), _side_length(record, "baseline", lengths)
        if mine is None or theirs is None:
            unmeasured += 1
            continue
        ours_len.append(mine)
        base_len.append(theirs)
        preference.append(statistics.fmean(audit.OUTCOME_SCORE[pairwise.order_outcome(o, orders[o]["verdict"])]
                                           for o in pairwise.ORDERS))
    consistency = {pid: "agreed" if label != "tie_disagreed" else "disagreed" for pid, label in split.items()}
    lc = None
    if preference and not unmeasured:  # on a subset of the prompts it would not be this comparison's figure
        lc = audit.length_controlled_win_rate(preference, ours_len, base_len, samples, seed)
    human = None
    if labels is not None:
        matching = [lb for lb in labels if lb.baseline == baseline]
        for lb in matching:
            if lb.ours is not None and lb.ours != ours:
                raise LimaError(f"{lb.where}: labels {lb.ours!r} vs {baseline!r}, but the cache judged {ours!r}")
        human = audit.judge_agreement(outcomes, matching, samples, seed) if matching else None
    return PairAudit(ours, baseline, _distribution("split", split, SPLIT, judges, samples, seed),
                     _distribution("consistency", consistency, ("agreed", "disagreed"), judges, samples, seed),
                     {"ours": ours_len, "baseline": base_len}, unmeasured, lc, human)


def pairwise_distribution(name: str | None, path: str, judge: str | None = None, samples: int = 1000,
                          seed: int = 0, lengths: Mapping[str, int] | None = None,
                          labels: Sequence[audit.HumanLabel] | None = None) -> Distribution:
    """One baseline's row of the report, with its audit. `lengths`: output hash -> length, for a
    cache whose judgments did not record them (`response_lengths`); `labels`: human labels, of which
    those naming this cache's baseline generator are scored."""
    cache = _load(path)
    chosen, judges = pairwise.judgments_from_records(cache.records, judge)
    if not chosen:
        raise LimaError(f"{path}: no pairwise judgments" + (f" by {judge}" if judge else ""))
    _check_judges(path, judges)
    judged = [r for r in cache.records if r.get("kind") == "pairwise" and r.get("judge") in judges]
    _check_one_pair(path, judged)
    ours_generator, baseline_generator = (str(judged[-1].get(f"{side}_generator")) for side in ("ours", "baseline"))
    if not name:  # default: the baseline's generator as recorded, else the file name
        name = judged[-1].get("baseline_generator") or Path(path).stem
    labels_by_outcome = {pid: pairwise.combine(dict(orders))[0] for pid, orders in chosen.items()}
    d = _distribution(name, labels_by_outcome, pairwise.OUTCOMES, judges, samples, seed)
    d.audit = pair_audit(chosen, ours_generator, baseline_generator, judges, lengths or {}, labels, samples, seed)
    return d


def absolute_distribution(name: str, path: str, judge: str | None = None, samples: int = 1000,
                          seed: int = 0) -> Distribution:
    results, judges = absolute.results_from_records(_load(path).records, judge)
    if not results:
        raise LimaError(f"{path}: no absolute judgments" + (f" by {judge}" if judge else ""))
    _check_judges(path, judges)
    return _distribution(name, results, absolute.RATINGS, judges, samples, seed)


def likert_arms(entries: Sequence[tuple[str | None, str]], judge: str | None = None, samples: int = 1000,
                seed: int = 0) -> list[likert.LikertScore]:
    """One row per (name, cache) of `--likert`: the mean score, its interval, n and failures. An
    unnamed arm is named after the generator its cache recorded."""
    arms = []
    for name, path in entries:
        records = _load(path).records
        arm = likert.likert_score(name or "", records, judge, samples, seed)
        if arm is None:
            raise LimaError(f"{path}: no Likert judgments" + (f" by {judge}" if judge else ""))
        _check_judges(path, set(arm.judges))
        if not name:
            arm.name = next((str(r["generator"]) for r in reversed(records)
                             if r.get("kind") == likert.KIND and r.get("generator")), Path(path).stem)
        arms.append(arm)
    return arms


def _likert_markdown(arms: Sequence[likert.LikertScore], samples: int, seed: int) -> list[str]:
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
              f"gave the same verdict (position consistency). Lengths in {audit.LENGTH_UNIT}, over the prompts judged."]
    unmeasured = sum(d.audit.unmeasured for d in rows)
    if unmeasured:
        lines.append(f"Lengths unknown for {unmeasured} judged prompt{'s' if unmeasured != 1 else ''} (judged before "
                     "caches recorded lengths): give their response files with --responses to measure them; no "
                     "length-controlled win rate is given for a comparison with unmeasured prompts.")
    lines += ["", "### Length-controlled win rate", "",
              "| Baseline | Prompts | Win rate (ties half) | Length-controlled win rate | Length coefficient |",
              "|---|---:|---:|---:|---:|"]
    for d in rows:
        lc = d.audit.length_controlled
        if lc is None:
            lines.append(f"| {d.name} | {len(d.audit.lengths['ours'])} | n/a | n/a | n/a |")
            continue
        lines.append(f"| {d.name} | {lc.prompts} | {lc.win_rate:.1f}% [{lc.win_rate_ci[0]:.1f}, "
                     f"{lc.win_rate_ci[1]:.1f}] | {lc.lc_win_rate:.1f}% [{lc.lc_ci[0]:.1f}, {lc.lc_ci[1]:.1f}] | "
                     f"{lc.length_coef:+.2f} |")
    lines += ["", "AlpacaEval 2's regression (Dubois et al. 2024), without its instruction-difficulty term: a logistic "
              "regression of each prompt's preference (the mean of its two orders: win 1, tie 0.5, loss 0) on an "
              "intercept and tanh(length difference / its standard deviation), L2 penalty "
              f"{audit.RIDGE}; the length-controlled win rate is its prediction with the length term at zero. A "
              "positive length coefficient: the judge favours the longer answer. Intervals refit on each "
              "bootstrap resample of the prompts.", ""]
    if human_labels:
        lines += [f"### Agreement with human labels ({human_labels})", "",
                  "| Baseline | Labels | Prompts | Agreement | Same verdict | Exactly one tie | Labels not judged |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for d in rows:
            h = d.audit.human
            if h is None:
                lines.append(f"| {d.name} | 0 | 0 | n/a | 0 | 0 | 0 |")
                continue
            agreement = "n/a" if not h.labels else f"{h.agreement:.1f}% [{h.ci[0]:.1f}, {h.ci[1]:.1f}]"
            lines.append(f"| {d.name} | {h.labels} | {h.prompts} | {agreement} | {h.same} | {h.half} | {h.unjudged} |")
        lines += ["", "Tie-discounted accuracy, as LIMA measures agreement (§4): 1 when the judge and the label "
                  "agree, 0.5 when exactly one of them says tie, 0 otherwise; the judge's verdict is the prompt's "
                  "outcome above. Labels are matched to a baseline by its generator name.", ""]
    return lines


def markdown(comparisons: Sequence[Distribution], ratings: Distribution | None, ours: str, samples: int,
             seed: int, human_labels: str | None = None, likert_scores: Sequence[likert.LikertScore] = ()) -> str:
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


CHART_DPI = 150
LIKERT_AXIS = (0.5, 6.5)  # half a step beyond 1-6: a mean of 1 still draws a bar, a 6 has room for its label


def new_figure(width: float, height: float):
    """A Figure (size in inches) with an Agg canvas and one axes: no pyplot, so no global backend state
    or display is needed. Returns (figure, axes)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise LimaError("the report's charts need matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _wrap(text: str, width: float, artist, renderer) -> str:
    """`text` broken after spaces and slashes (a local judge is named by its path) into lines that each
    fit `width` pixels in `artist`'s font; a piece wider than that alone keeps its own line."""
    lines = [""]
    for piece in re.split(r"(?<=[ /])", text):
        candidate = lines[-1] + piece
        fits = renderer.get_text_width_height_descent(candidate.rstrip(), artist.get_fontproperties(), False)[0]
        if lines[-1] and fits > width:
            lines[-1] = lines[-1].rstrip()
            lines.append(piece)
        else:
            lines[-1] = candidate
    return "\n".join(lines).rstrip()


def fit_titles(fig, ax, title: str, subtitle: str, pad: float = 6.0) -> None:
    """Titles the figure (bold) and its axes (small: the judge, the n), each wrapped to the width it has
    (the subtitle is centred on the axes, not the canvas), then lays the figure out to fit them."""
    top = fig.suptitle(title, fontweight="bold")
    sub = ax.set_title(subtitle, fontsize=8, pad=pad)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    centre, edge = (box.x0 + box.x1) / 2, 0.96 * fig.bbox.width  # a margin for the PNG's own hinting
    top.set_text(_wrap(title, edge, top, renderer))
    sub.set_text(_wrap(subtitle, edge - 2 * abs(centre - fig.bbox.width / 2), sub, renderer))
    fig.tight_layout()


def has_width(widths) -> np.ndarray:
    """Of intervals given as (2, n) widths below and above their points, those with any width: a zero-wide
    one (every score alike) would draw its caps alone, a stray tick."""
    return np.asarray(widths, np.float64).sum(axis=0) > 0


def stacked_bars(rows: Sequence[Distribution], labels: Sequence[str], colors: Sequence[str], xlabel: str,
                 title: str, hatches: Sequence[str] | None = None):
    """Horizontal stacked bars, one per row, each segment labelled with its percentage (LIMA Fig. 1);
    titled, with the judge, each row's n, and the 95% intervals of the first and the last category's
    shares as error bars on their edges (the middle ones lie between). Returns the matplotlib Figure."""
    fig, ax = new_figure(8, 2.3 + 0.55 * len(rows))
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    categories = rows[0].categories
    for i, (category, label, color) in enumerate(zip(categories, labels, colors)):
        widths = np.array([d.pct(category) if d.total else 0.0 for d in rows])
        ax.barh(y, widths, left=left, color=color, label=label, height=0.6, edgecolor="white",
                hatch=hatches[i] if hatches else None)
        for yi, (x0, w) in enumerate(zip(left, widths)):
            if w >= 4:  # narrower segments would not fit their label
                ax.text(x0 + w / 2, yi, f"{w:.0f}%", ha="center", va="center", fontsize=9)
        left += widths
    first, last = categories[0], categories[-1]
    for yi, d in enumerate(rows):
        if not d.total:
            continue
        # Above and below the middle, so that wide intervals neither overlap each other nor the labels.
        lo, hi = d.intervals[first]
        x = d.pct(first)
        if hi > lo:
            ax.errorbar([x], [yi - 0.17], xerr=[[x - lo], [hi - x]], fmt="none", ecolor="black", elinewidth=1,
                        capsize=3)
        lo, hi = d.intervals[last]
        x = 100 - d.pct(last)  # the last segment's left edge moves opposite to its share
        if hi > lo:
            ax.errorbar([x], [yi + 0.17], xerr=[[x - (100 - hi)], [(100 - lo) - x]], fmt="none", ecolor="black",
                        elinewidth=1, capsize=3)
    ax.set_yticks(y, [f"{d.name}\n(n={d.total})" for d in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(xlabel)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    judges = sorted({j for d in rows for j in d.judges})
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels), frameon=False, fontsize=8)
    fit_titles(fig, ax, title, f"judge: {', '.join(judges)} · error bars: 95% bootstrap intervals of "
               f"'{labels[0]}' and '{labels[-1]}'", pad=24)
    return fig


def likert_chart(arms: Sequence[likert.LikertScore], title: str = "Helpfulness (Likert, 1-6)"):
    """LIMA's Figure 5: one bar per arm at its mean score with its 95% interval, on the 1-6 scale;
    titled, with the judge and each arm's n. Returns the matplotlib Figure.
    The bars rise from half a step below the scale's floor, so that a mean of 1 shows as a short bar
    rather than none; bars still differ by exactly their means' difference, and the ticks mark 1-6."""
    fig, ax = new_figure(max(4.0, 1.3 * len(arms) + 1.5), 4.2)
    x = np.arange(len(arms))
    scored = [i for i, a in enumerate(arms) if a.n]
    bottom = LIKERT_AXIS[0]
    means = np.array([arms[i].mean for i in scored])
    ax.bar(x[scored], means - bottom, bottom=bottom, width=0.6, color="#3f7fbf")
    errors = np.array([[arms[i].mean - arms[i].ci_low for i in scored],
                       [arms[i].ci_high - arms[i].mean for i in scored]])
    shown = has_width(errors)
    ax.errorbar(x[scored][shown], means[shown], yerr=errors[:, shown], fmt="none", ecolor="black", elinewidth=1,
                capsize=4)
    for i, a in enumerate(arms):
        label = "n/a" if not a.n else f"{a.mean:.2f}"
        ax.text(x[i], (a.ci_high if a.n else 1.0) + 0.08, label, ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, [f"{a.name}\n(n={a.n})" for a in arms])
    ax.set_ylim(*LIKERT_AXIS)
    ax.set_yticks(range(1, 7))
    ax.set_ylabel("mean score")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    judges = sorted({j for a in arms for j in a.judges})
    fit_titles(fig, ax, title, f"judge: {', '.join(judges)} · error bars: 95% bootstrap intervals")
    return fig


def save_png(fig, path: PathLike) -> None:
    """Writes `fig` at CHART_DPI: the PNG is the figure's size in inches times that, in pixels."""
    with Path(path).open("wb") as f:  # a file object: matplotlib writes local paths only, this may be gs://
        fig.savefig(f, format="png", dpi=CHART_DPI)


def pairwise_chart(comparisons: Sequence[Distribution], ours: str):
    """LIMA's Figure 1, with the ties told apart where the audit is known (hatched: the orders disagreed)."""
    if all(d.audit is not None for d in comparisons):
        rows = [dataclasses.replace(d.audit.split, name=d.name) for d in comparisons]
        return stacked_bars(rows, (f"{ours} wins", "Tie: neither", "Tie: orders disagree", f"{ours} loses"),
                            _SPLIT_COLORS, "% of prompts", f"Pairwise preference: {ours} vs each baseline",
                            hatches=("", "", "///", ""))
    return stacked_bars(comparisons, (f"{ours} wins", "Tie", f"{ours} loses"), _PAIR_COLORS, "% of prompts",
                        f"Pairwise preference: {ours} vs each baseline")


def absolute_chart(ratings: Distribution, ours: str):
    """The share of each absolute rating, one stacked bar."""
    return stacked_bars([ratings], absolute.RATINGS, _RATING_COLORS, "% of responses", f"Absolute rating of {ours}")


REPORT_FILES = ("report.md", "report.json", "pairwise.png", "absolute.png", "likert.png")


def check_out_dir(out_dir: str, overwrite: bool = False) -> None:
    """Refuses a folder that already holds a report (any of its files) unless `overwrite`: a report
    is the record of a run's verdicts, and a second command pointed at the same folder by mistake
    must not replace it. Called before any work, and again by `write_report`."""
    out = user_path(out_dir)
    for name in REPORT_FILES:
        if not overwrite and (out / name).exists():
            raise LimaError(f"{out / name} exists; pass --overwrite to replace the report")


def write_report(out_dir: str, comparisons: Sequence[Distribution], ratings: Distribution | None,
                 ours: str = "LIMA", samples: int = 1000, seed: int = 0, overwrite: bool = False,
                 human_labels: str | None = None, likert_scores: Sequence[likert.LikertScore] = ()) -> str:
    """Writes report.md, report.json and the charts to `out_dir` (local or gs://); returns the Markdown.
    An existing report there is refused unless `overwrite`; then its files are all replaced or removed,
    so that the folder never mixes two reports."""
    check_out_dir(out_dir, overwrite)
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


def parse_pairwise_flag(value: str, flag: str = "pairwise") -> list[tuple[str | None, str]]:
    """`name=path,name=path` (or bare paths, named after the generator the cache recorded)."""
    entries = []
    for item in filter(None, (s.strip() for s in value.split(","))):
        name, sep, path = item.partition("=")
        entries.append((name.strip(), path.strip()) if sep else (None, item))
    for name, path in entries:
        if not path or (name is not None and not name):
            raise LimaError(f"--{flag}: {value!r} should be NAME=PATH[,NAME=PATH...]")
    return entries
