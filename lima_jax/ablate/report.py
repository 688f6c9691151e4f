"""The ablation's report: per arm, its data (source, SHA-256, examples drawn), its chosen checkpoint and its
mean Likert score with a 95% interval (`evaluate.stats`: a bootstrap over prompts, each prompt with its K
samples), as `report/report.md`, `report/report.json` and `report/likert.png` (LIMA's Figure 5: one bar
per arm); a grid whose arms differ in size also gets `report/quantity.png` (Figure 6: the score against
the number of training examples, on a log scale).

The report is derived from the arms' files alone, so it is rewritten (whole, atomically) on every run.
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

import ml_collections
import numpy as np

from lima_jax.ablate.plan import DRAW_FILE, arms, workdir_of
from lima_jax.ablate.runner import LIKERT_FILE, judge_name, read_state
from lima_jax.errors import LimaError
from lima_jax.evaluate.judge.cache import JudgmentCache
from lima_jax.evaluate.charts import LIKERT_AXIS, fit_titles, has_width, likert_chart, new_figure, save_png
from lima_jax.evaluate.protocols.likert import LikertScore, likert_score
from lima_jax.storage.paths import Path, write_atomically

REPORT_DIR = "report"


def _row(arm, grid: ml_collections.ConfigDict, judge: str, samples: int) -> tuple[dict[str, Any], LikertScore]:
    draw = json.loads((arm.data_dir / DRAW_FILE).read_text(encoding="utf-8"))
    state = read_state(arm)
    score = likert_score(arm.name, JudgmentCache(arm.dir / LIKERT_FILE).records, judge, samples, grid.seed)
    if score is None:
        score = LikertScore(arm.name, math.nan, math.nan, math.nan, 0, 0, 0, [judge])
    ckpt = state.get("checkpoint", {})
    row = {**score.to_json(), "data": draw["source"], "sha256": draw["sha256"], "seed": draw["seed"],
           "source_examples": draw["source_examples"], "train_examples": draw["train_examples"],
           "dev_examples": draw["dev_examples"], "checkpoint": ckpt.get("path"), "epoch": ckpt.get("epoch"),
           "step": ckpt.get("step"), "choice": ckpt.get("choice"), "samples_per_prompt": grid.samples_per_prompt}
    return row, score


def markdown(grid: ml_collections.ConfigDict, rows: Sequence[dict[str, Any]], samples: int) -> str:
    def num(v) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    lines = [f"# Ablation: {grid.name}", "",
             f"Base config `{grid.base}`; {grid.samples_per_prompt} samples per test prompt, each rated 1-6 by "
             f"`{rows[0]['judges'][0] if rows and rows[0]['judges'] else '?'}` (LIMA Appendix D); mean with a 95% "
             f"percentile-bootstrap interval over prompts ({samples} resamples, seed {grid.seed}); checkpoint: "
             f"`{grid.checkpoint}`.", "",
             "| arm | trained on | of | data | mean [95%] | scored | failed | prompts | checkpoint |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        where = f"epoch {r['epoch']}, step {r['step']}" if r["epoch"] is not None else f"step {r['step']}"
        lines.append(f"| {r['name']} | {r['train_examples']} | {r['source_examples']} | `{r['data']}` "
                     f"(sha256 {r['sha256'][:12]}) | {num(r['mean'])} [{num(r['ci_low'])}, {num(r['ci_high'])}] | "
                     f"{r['n']} | {r['failures']} | {r['prompts']} | {where} |")
    lines += ["", "Each arm's drawn examples (their lines in the source, and ids) are listed in "
              f"`<arm>/data/{DRAW_FILE}`; its samples in `<arm>/responses.jsonl`, its judgments in "
              f"`<arm>/{LIKERT_FILE}`."]
    return "\n".join(lines) + "\n"


def quantity_chart(rows: Sequence[dict[str, Any]], title: str):
    """LIMA's Figure 6: mean score (with its 95% interval) against training examples, log-scaled, on the
    1-6 scale with half a step to spare at each end (a point at 1 or 6 clears the frame)."""
    fig, ax = new_figure(5.5, 4.2)
    scored = sorted((r for r in rows if r["n"]), key=lambda r: r["train_examples"])
    x = np.array([r["train_examples"] for r in scored], np.float64)
    y = np.array([r["mean"] for r in scored])
    err = np.array([[r["mean"] - r["ci_low"] for r in scored], [r["ci_high"] - r["mean"] for r in scored]])
    ax.plot(x, y, "o-", color="#3f7fbf")
    shown = has_width(err)
    ax.errorbar(x[shown], y[shown], yerr=err[:, shown], fmt="none", ecolor="black", elinewidth=1, capsize=4)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{int(r['train_examples']):,}\n(n={r['n']})" for r in scored])
    ax.set_ylim(*LIKERT_AXIS)
    ax.set_yticks(range(1, 7))
    ax.set_xlabel("training examples")
    ax.set_ylabel("mean score")
    for r in scored:
        ax.annotate(f"{r['mean']:.2f}", (r["train_examples"], r["ci_high"]), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=8)
    judges = sorted({j for r in rows for j in r["judges"]})
    fit_titles(fig, ax, title, f"judge: {', '.join(judges)} · error bars: 95% bootstrap intervals")
    return fig


def write_report(grid: ml_collections.ConfigDict, samples: int = 1000) -> dict[str, Any]:
    """Writes report.md, report.json, likert.png (and quantity.png) under `<workdir>/report`; returns the JSON."""
    all_arms = arms(grid)
    chosen = {a.name: read_state(a).get("checkpoint") for a in all_arms}
    if not all(chosen.values()):
        missing = [name for name, c in chosen.items() if not c]
        raise LimaError(f"arms {', '.join(missing)} have no chosen checkpoint yet: run the grid first")
    judge = judge_name(grid.judge, chosen)
    pairs = [_row(arm, grid, judge, samples) for arm in all_arms]
    rows = [r for r, _ in pairs]
    out = workdir_of(grid) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    report = {"name": grid.name, "base": grid.base, "checkpoint": grid.checkpoint, "seed": grid.seed,
              "samples_per_prompt": grid.samples_per_prompt, "judge": judge, "bootstrap_samples": samples,
              "grid": grid.to_dict(), "arms": rows}
    write_atomically(out / "report.json", json.dumps(report, ensure_ascii=False, indent=1, allow_nan=False) + "\n")
    write_atomically(out / "report.md", markdown(grid, rows, samples))
    title = f"{grid.name}: helpfulness (Likert, 1-6)"
    save_png(likert_chart([s for _, s in pairs], title=title), Path(out) / "likert.png")
    if len({r["train_examples"] for r in rows}) > 1 and sum(1 for r in rows if r["n"]) > 1:
        save_png(quantity_chart(rows, title), Path(out) / "quantity.png")
    return report
