"""The reports' charts, drawn with matplotlib's object API (no pyplot: no global backend or display):
LIMA's Figure 1 (pairwise preference, stacked bars), the absolute ratings, Figure 5 (Likert means with
their intervals), and the helpers that `epochs` and `ablate` draw their charts with.
"""
from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Sequence

import numpy as np

from lima_jax.errors import LimaError
from lima_jax.evaluate.stats import Distribution
from lima_jax.storage.paths import Path, PathLike

if TYPE_CHECKING:
    from lima_jax.evaluate.protocols.likert import LikertScore

_PAIR_COLORS = ("#3f7fbf", "#c8c8c8", "#e8833a")  # wins, tie, loses
_SPLIT_COLORS = ("#3f7fbf", "#c8c8c8", "#e4e4e4", "#e8833a")  # wins, tie (neither), tie (orders disagreed), loses
RATING_COLORS = ("#d9534f", "#f0ad4e", "#5cb85c")  # Fail, Pass, Excellent

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


def likert_chart(arms: Sequence[LikertScore], title: str = "Helpfulness (Likert, 1-6)"):
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
    return stacked_bars([ratings], ratings.categories, RATING_COLORS, "% of responses", f"Absolute rating of {ours}")
