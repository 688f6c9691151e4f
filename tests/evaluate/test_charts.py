"""Every chart the project draws, rendered from small synthetic inputs and checked as a picture
(`support.charts.check_chart`): the PNG's size is the one asked for, every text lies inside the canvas
and clear of the others, a mean at the scale's floor still shows, a zero-width interval draws no bar."""
from __future__ import annotations

import math

import pytest

from lima_jax.ablate.report import quantity_chart
from lima_jax.evaluate import charts, epochs, stats
from lima_jax.evaluate.protocols import dialogue, pairwise
from lima_jax.evaluate.protocols.dialogue import Rated
from lima_jax.evaluate.judge.runner import RunStats
from lima_jax.evaluate.protocols.absolute import RATINGS
from lima_jax.evaluate.protocols.likert import LikertScore
from support.charts import check_chart

# A local judge is named after its checkpoint's absolute path: the longest subtitle a chart gets.
JUDGE = "local:/home/someone/projects/lima-jax/runs/ablations/quantity/arm_32k/checkpoints/14420"


def _save(fig, tmp_path, name):
    charts.save_png(fig, tmp_path / name)
    return check_chart(fig, tmp_path / name, charts.CHART_DPI)


def _arm(name, mean, low, high, n=30):
    return LikertScore(name, mean, low, high, n, 0, n, [JUDGE])


def _dist(name, categories, counts):
    labels = [c for c in categories for _ in range(counts[c])]
    return stats.Distribution(name, tuple(categories), dict(counts),
                              stats.bootstrap_intervals(labels, categories, 200, 0), 0, [JUDGE])


def _bar_heights_px(fig):
    """The rendered height of each bar of the (single) axes, in pixels."""
    renderer = fig.canvas.get_renderer()
    return [p.get_window_extent(renderer).height for p in fig.axes[0].patches]


def test_likert_chart_fits_its_subtitle_and_labels(tmp_path):
    arms = [_arm("base", 3.2, 2.9, 3.6), _arm("lima", 5.9, 5.6, 6.0), _arm("none", math.nan, math.nan, math.nan, 0)]
    fig = charts.likert_chart(arms)
    _save(fig, tmp_path, "likert.png")
    subtitle = fig.axes[0].get_title()
    assert JUDGE in subtitle.replace("\n", "") and "95% bootstrap intervals" in subtitle.replace("\n", " ")
    assert "\n" in subtitle  # wrapped: it is wider than the chart


def test_likert_chart_at_the_floor_shows_its_bars_and_no_zero_width_error_bars(tmp_path):
    """Every judgment 1: the means sit on the scale's floor and the intervals have no width (the
    ablation's chart, with its longer title, two arms)."""
    arms = [_arm("2k", 1.0, 1.0, 1.0), _arm("4k", 1.0, 1.0, 1.0)]
    fig = charts.likert_chart(arms, title="quantity: helpfulness (Likert, 1-6)")
    _save(fig, tmp_path, "likert.png")
    heights = _bar_heights_px(fig)
    assert len(heights) == 2 and min(heights) >= 20  # a visible bar, not a line on the axis
    above = charts.likert_chart([_arm("2k", 2.0, 1.5, 2.5), _arm("4k", 1.0, 1.0, 1.0)])
    above.canvas.draw()
    two, one = _bar_heights_px(above)
    assert two > one  # a higher mean draws a higher bar


def test_quantity_chart_fits_and_shows_points_at_the_floor(tmp_path):
    means = {2000: (1.0, 1.0, 1.0), 4000: (2.4, 2.0, 2.9), 8000: (3.1, 2.6, 3.5), 16000: (4.7, 4.1, 5.2),
             32000: (6.0, 6.0, 6.0)}
    rows = [{**_arm(f"{size // 1000}k", *m).to_json(), "train_examples": size} for size, m in means.items()]
    fig = quantity_chart(rows, "quantity: helpfulness (Likert, 1-6)")
    _save(fig, tmp_path, "quantity.png")
    ax = fig.axes[0]
    floor, ceiling = ax.transData.transform([(2000, 1.0), (32000, 6.0)])[:, 1]
    bottom, top = ax.get_window_extent().y0, ax.get_window_extent().y1
    assert floor - bottom >= 10 and top - ceiling >= 10  # points at 1 and 6 sit inside the axes, not on its frame


def test_pairwise_charts_fit_and_draw_no_zero_width_error_bars(tmp_path):
    """A baseline that LIMA beat on every prompt (all intervals zero wide), one mixed, in both of the
    pairwise chart's forms: three outcomes, and the ties told apart by the audit."""
    cats = ("win", "tie", "loss")
    plain = [_dist("gpt-4", cats, {"win": 10, "tie": 0, "loss": 0}),
             _dist("a baseline with a long name", cats, {"win": 4, "tie": 3, "loss": 5})]
    _save(charts.pairwise_chart(plain, "LIMA-65B"), tmp_path, "pairwise.png")
    audited = []
    for d, split in zip(plain, ({"win": 10, "tie_neither": 0, "tie_disagreed": 0, "loss": 0},
                                {"win": 4, "tie_neither": 1, "tie_disagreed": 2, "loss": 5})):
        agreed = _dist("consistency", ("agreed", "disagreed"), {"agreed": 8, "disagreed": 2})
        d.audit = pairwise.PairAudit("ours", "base", _dist("split", pairwise.SPLIT, split), agreed,
                                      {"ours": [], "baseline": []}, 0, None, None)
        audited.append(d)
    _save(charts.pairwise_chart(audited, "LIMA-65B"), tmp_path, "pairwise_audited.png")


def test_absolute_chart_fits(tmp_path):
    ratings = _dist("LIMA", RATINGS, {"Fail": 0, "Pass": 0, "Excellent": 12})
    _save(charts.absolute_chart(ratings, "LIMA-65B"), tmp_path, "absolute.png")


def test_dialogue_chart_fits(tmp_path, monkeypatch):
    """Figure 7 as `evaluate.dialogue` writes it (the stacked bars above, one row per checkpoint); the
    figure it saves is kept to be measured."""
    everything_excellent = {"d1": ["Excellent"] * 4, "d2": ["Excellent"] * 3}
    mixed = {"d1": ["Excellent", "Fail", "Pass", "Fail"], "d2": ["Pass", "failed", "Excellent"]}
    rated = [Rated("zero-shot", mixed, RunStats(), JUDGE),
             Rated("30 dialogue chains", everything_excellent, RunStats(), JUDGE)]
    saved, save_png = [], charts.save_png
    monkeypatch.setattr(charts, "save_png", lambda fig, path: (saved.append(fig), save_png(fig, path)))
    dialogue.write(str(tmp_path), rated, samples=50)
    check_chart(saved[0], tmp_path / dialogue.CHART, charts.CHART_DPI)


@pytest.mark.parametrize("judged", ["likert", "pairwise", "none"])
def test_selection_chart_fits_and_shows_points_at_the_floor(tmp_path, judged):
    rows = [{"epoch": e, "step": 10 * e, "dev_loss": 1.0, "dev_perplexity": 9.0 - e} for e in (1, 2, 3)]
    for r in rows:
        if judged == "likert":
            r.update(likert_mean=1.0, likert_ci_low=1.0, likert_ci_high=1.0, likert_n=5, likert_failures=0,
                     likert_judge=JUDGE)
        elif judged == "pairwise":
            r.update(win_pct=0.0, tie_pct=100.0, loss_pct=0.0, failed=0)
    fig = epochs.chart(rows)
    _save(fig, tmp_path, "select.png")
    if judged != "none":
        twin = fig.axes[1]
        floor = twin.transData.transform([(1, rows[0].get("likert_mean", 0.0))])[0, 1]
        assert floor - twin.get_window_extent().y0 >= 10  # the judged points clear the axes' frame
