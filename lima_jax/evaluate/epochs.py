"""Pick a checkpoint the way LIMA did: per epoch, the dev loss and the judged quality of dev answers
(the library behind `python -m lima_jax.evaluate.select`, and the ablation's Likert checkpoint choice).

For every epoch checkpoint of the run: the dev loss and perplexity (from the run's metrics.jsonl,
computed at that step during training) and, with a judge, the judged quality of that checkpoint's dev
answers: the win/tie/loss rate against a fixed reference's responses, and/or the mean 1-6 Likert
score with its 95% interval. select.md and select.png put dev perplexity and judged quality side by
side (LIMA's Figure 9: perplexity kept rising past the epochs that generated best). Each epoch's
Likert judgments go to a cache of their own, `likert/step_N.jsonl`, so that each is also an arm for
`evaluate.report --likert` (one cache for every epoch would keep only the latest answer to a prompt).
"""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from lima_jax.data.records import read_conversations
from lima_jax.errors import LimaError
from lima_jax.log import say
from lima_jax.evaluate.answers.formats import read_responses
from lima_jax.evaluate.answers.generation import generate_responses, generation_settings
from lima_jax.evaluate.charts import LIKERT_AXIS, fit_titles, has_width, new_figure, save_png
from lima_jax.evaluate.judge.cache import JudgmentCache
from lima_jax.evaluate.judge.factory import with_answer_format
from lima_jax.evaluate.judge.prompts import LIKERT_LINE
from lima_jax.evaluate.judge.protocol import Judge
from lima_jax.evaluate.protocols.likert import judge_likert, likert_score
from lima_jax.evaluate.protocols.pairwise import judge_pairwise
from lima_jax.inference import hosts
from lima_jax.inference.generator import Generator, parse_mesh, prompt_turns
from lima_jax.storage.paths import Path
from lima_jax.train.metrics import DEV_FILE, METRICS_FILE
from lima_jax.weights import checkpoint

if TYPE_CHECKING:
    from jax.sharding import Mesh


def epoch_checkpoints(workdir: Path) -> list[dict[str, Any]]:
    """Each epoch's dev loss record joined with its checkpoint step, in epoch order."""
    metrics = workdir / METRICS_FILE
    if not metrics.exists():
        raise LimaError(f"{metrics}: missing file (is {workdir} a lima_jax training run?)")
    rows = []
    lines = metrics.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a last line cut short by a kill: the run rewrites it when it resumes
            raise LimaError(f"{metrics}:{number}: not a JSON record") from None
        if record.get("dev_loss") is None:  # a step record, or an epoch without a dev set
            continue
        step_dir = workdir / checkpoint.STEPS_DIR / str(record["step"])
        if checkpoint.is_checkpoint(step_dir):
            rows.append({"epoch": record["epoch"], "step": record["step"], "dev_loss": record["dev_loss"],
                         "dev_perplexity": math.exp(min(record["dev_loss"], 50.0)), "checkpoint": step_dir})
    if not rows:
        raise LimaError(f"{workdir}: no epoch checkpoints with a dev loss")
    return rows


def dev_prompts(workdir: Path) -> list[list[str]]:
    """The prompts of the dev set the run evaluated on, from the `dev.jsonl` training wrote."""
    path = workdir / DEV_FILE
    if not path.is_file():
        raise LimaError(f"{path}: missing file (the run's dev set; runs from lima_jax before 0.2 lack it: retrain)")
    records, _ = read_conversations(path)
    return [prompt_turns(r["conversations"]) for r in records]


def responses_file(out_dir: Path, row: dict[str, Any]) -> Path:
    return out_dir / "responses" / f"step_{row['step']}.jsonl"


def generate_epochs(rows, dev_prompts, out_dir: Path, params, seed: int, mesh: Mesh | None = None,
                    remedy: str = "use another output folder") -> None:
    """Each checkpoint's dev answers (resumably), as `evaluate.generate` writes them: on a mesh over
    several processes every process takes part and process 0 writes. A file generated otherwise is
    refused, its error ending with `remedy`."""
    for row in rows:  # a file made with other sampling is refused, not continued
        settings = generation_settings(row["checkpoint"], params, seed)
        generate_responses(Generator(str(row["checkpoint"]), mesh), dev_prompts, responses_file(out_dir, row),
                           f"epoch {row['epoch']}", params, seed, batch_size=8, settings=settings,
                           remedy=remedy, progress=lambda line, e=row["epoch"]: say(f"epoch {e}: {line}"))


def judge_epochs(rows, reference, judge, cache, out_dir: Path) -> None:
    """Judges each checkpoint's dev answers (from `generate_epochs`) against the reference."""
    for row in rows:
        say(f"epoch {row['epoch']}: judging its dev answers against the reference")
        result = judge_pairwise(read_responses(responses_file(out_dir, row)), reference, judge, cache)
        row.update({k: result.summary[k] for k in ("win_pct", "tie_pct", "loss_pct", "failed")})


def likert_cache_file(out_dir: Path, row: dict[str, Any]) -> Path:
    return out_dir / "likert" / f"step_{row['step']}.jsonl"


def open_likert_caches(rows, out_dir: Path) -> dict[int, JudgmentCache]:
    """Each epoch's Likert cache, read (and so validated) before hours of generation rather than after."""
    return {row["step"]: JudgmentCache(likert_cache_file(out_dir, row)) for row in rows}


def likert_epochs(rows, judge, caches: dict[int, JudgmentCache], out_dir: Path, samples: int = 1000,
                  seed: int = 0) -> None:
    """Scores each checkpoint's dev answers (from `generate_epochs`) 1-6 with the Likert judge (its
    answer format `prompts.LIKERT_LINE`) and adds the mean, its 95% interval, n and failures to the row."""
    (out_dir / "likert").mkdir(parents=True, exist_ok=True)
    for row in rows:
        cache = caches[row["step"]]
        say(f"epoch {row['epoch']}: scoring its dev answers 1-6 (Likert)")
        judge_likert(read_responses(responses_file(out_dir, row)), judge, cache)
        arm = likert_score(f"epoch {row['epoch']}", cache.records, judge.name, samples, seed)
        scored = arm is not None and arm.n > 0
        row.update({"likert_mean": round(arm.mean, 3) if scored else None,
                    "likert_ci_low": round(arm.ci_low, 3) if scored else None,
                    "likert_ci_high": round(arm.ci_high, 3) if scored else None, "likert_n": arm.n if arm else 0,
                    "likert_failures": arm.failures if arm else 0, "likert_judge": judge.name})


def judge_all_epochs(rows: list[dict[str, Any]], prompts: list[list[str]], out_dir: Path, params, seed: int,
                     mesh: str, make_judge: Callable[[], Judge], reference: str | None, likert: bool,
                     remedy: str) -> None:
    """Generates each epoch's dev answers (every process takes part), then on process 0 judges them
    against `reference` and/or scores them (Likert), adding the figures to the rows. The caches and the
    reference are read before hours of generation rather than after."""
    device_mesh = parse_mesh(mesh)
    opened: dict[str, Any] = {}

    def check_inputs() -> None:
        if reference:
            opened["cache"] = JudgmentCache(out_dir / "judgments.jsonl")
            opened["reference"] = read_responses(reference)
        if likert:
            opened["likert"] = open_likert_caches(rows, out_dir)

    hosts.from_process_0(check_inputs)
    judge = make_judge()  # on every process: a local judge's restore is collective
    generate_epochs(rows, prompts, out_dir, params, seed, device_mesh, remedy=remedy)
    if hosts.is_writer() and reference:
        judge_epochs(rows, opened["reference"], judge, opened["cache"], out_dir)
    if hosts.is_writer() and likert:
        likert_epochs(rows, with_answer_format(judge, LIKERT_LINE), opened["likert"], out_dir)


def best_epoch(rows: list[dict[str, Any]], by: str) -> dict[str, Any]:
    """The ablation's checkpoint choice among epoch rows: the highest Likert mean (`by="likert"`, an
    epoch with nothing scored last), the lowest dev loss (`"dev_loss"`), else the first row; a tie goes
    to the earlier epoch."""
    if by == "likert":
        return max(rows, key=lambda r: (r["likert_mean"] if r["likert_mean"] is not None else -1.0, -r["epoch"]))
    if by == "dev_loss":
        return min(rows, key=lambda r: (r["dev_loss"], r["epoch"]))
    return rows[0]


def write_table(rows, path: Path) -> str:
    judged, scored = "win_pct" in rows[0], "likert_n" in rows[0]
    head = "| epoch | step | dev loss | dev perplexity |" + (" win % | tie % | loss % | failed |" if judged else "")
    head += " Likert mean [95%] | scored | failed |" if scored else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = f"| {r['epoch']} | {r['step']} | {r['dev_loss']:.4f} | {r['dev_perplexity']:.2f} |"
        if judged:
            line += f" {r['win_pct']:.1f} | {r['tie_pct']:.1f} | {r['loss_pct']:.1f} | {r['failed']} |"
        if scored:
            mean = "n/a" if r["likert_mean"] is None else \
                f"{r['likert_mean']:.2f} [{r['likert_ci_low']:.2f}, {r['likert_ci_high']:.2f}]"
            line += f" {mean} | {r['likert_n']} | {r['likert_failures']} |"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def chart(rows):
    """Dev perplexity per epoch and, on a second axis, the judged quality: LIMA's Figure 9 for Likert
    scores (with their 95% intervals, on the 1-6 scale with half a step to spare), else the win rate."""
    fig, ax = new_figure(7, 4)
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["dev_perplexity"] for r in rows], "o-", color="tab:blue", label="dev perplexity")
    ax.set_xticks(epochs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev perplexity", color="tab:blue")
    if "likert_n" in rows[0]:  # the win rate, if also judged, stays in the table
        twin = ax.twinx()
        scored = [r for r in rows if r["likert_mean"] is not None]
        means = np.array([r["likert_mean"] for r in scored])
        errors = np.array([[r["likert_mean"] - r["likert_ci_low"] for r in scored],
                           [r["likert_ci_high"] - r["likert_mean"] for r in scored]])
        x = np.array([r["epoch"] for r in scored])
        twin.plot(x, means, "s-", color="tab:green")
        shown = has_width(errors)
        twin.errorbar(x[shown], means[shown], yerr=errors[:, shown], fmt="none", ecolor="tab:green", capsize=3)
        twin.set_ylabel("Likert helpfulness, 1-6 (95% interval)", color="tab:green")
        twin.set_ylim(*LIKERT_AXIS)
        twin.set_yticks(range(1, 7))
        ns = sorted({r["likert_n"] for r in rows})
        n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
        fit_titles(fig, ax, "Dev perplexity and judged quality per epoch",
                   f"judge: {rows[0]['likert_judge']} · n={n} dev answers per epoch")
        return fig
    if "win_pct" in rows[0]:
        twin = ax.twinx()
        twin.plot(epochs, [r["win_pct"] for r in rows], "s-", color="tab:green", label="win % vs reference")
        twin.set_ylabel("win % vs reference", color="tab:green")
        twin.set_ylim(-5, 105)  # a rate of 0 or 100 clears the frame
    ax.set_title("Checkpoint selection")
    fig.tight_layout()
    return fig


def plot(rows, path: Path) -> None:
    save_png(chart(rows), path)


def write_selection(rows: list[dict[str, Any]], out_dir: Path) -> str:
    """select.md (said) and select.png in `out_dir`; returns the rows as a JSON line."""
    out_dir.mkdir(parents=True, exist_ok=True)
    say(write_table(rows, out_dir / "select.md"))
    plot(rows, out_dir / "select.png")
    return json.dumps([{k: v for k, v in r.items() if k != "checkpoint"} for r in rows])
