"""The report: percentages, bootstrap intervals, report.md and the PNG charts, from judgment caches
made by an in-process judge (which also shows that any `Judge` plugs in, not only the HTTP one)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lima_jax.errors import LimaError
from lima_jax.evaluate import reporting as report
from lima_jax.evaluate.ratings import judge_absolute
from lima_jax.evaluate.judges import Judge, JudgeFailure
from lima_jax.evaluate.judging import JudgmentCache
from lima_jax.evaluate.comparisons import judge_pairwise
from lima_jax.evaluate.responses import make_record
from test_evaluate_pairwise import run_cli


class TableJudge:
    """A judge that needs no server: looks up each prompt's planned outcome (as a local-checkpoint
    judge would compute one from answer-letter log-probabilities)."""

    def __init__(self, plan: dict[str, str], name: str = "table-judge"):
        self.plan = plan
        self.name = name
        self.asked = 0

    def verdict(self, prompt_messages, choices):
        self.asked += 1
        text = prompt_messages[-1]["content"]
        tag = text.split("TAG-")[1].split()[0]
        planned = self.plan[tag]
        if planned == "fail":
            raise JudgeFailure("no verdict", raw="???")
        if planned in choices:  # an absolute rating
            return planned, f"Verdict: {planned}"
        ours_is_a = text.index("OURS") < text.index("BASE")
        letter = {"win": "A" if ours_is_a else "B", "loss": "B" if ours_is_a else "A", "tie": "C"}[planned]
        return letter, f"Verdict: {letter}"


def pair_cache(path, outcomes: list[str]):
    plan = {str(i): o for i, o in enumerate(outcomes)}
    ours = {f"p{i}": make_record([f"TAG-{i} question"], f"OURS {i}", "lima") for i in plan}
    base = {f"p{i}": make_record([f"TAG-{i} question"], f"BASE {i}", "alpaca-65b") for i in plan}
    judge = TableJudge(plan)
    assert isinstance(judge, Judge)
    judge_pairwise(ours, base, judge, JudgmentCache(path), progress=False)
    return path


def rating_cache(path, ratings: list[str]):
    plan = {str(i): r for i, r in enumerate(ratings)}
    records = {f"p{i}": make_record([f"TAG-{i} question"], f"answer {i}", "lima") for i in plan}
    judge_absolute(records, TableJudge(plan), JudgmentCache(path), progress=False)
    return path


def test_bootstrap_contains_the_estimate_and_shrinks_with_more_data():
    small = ["win"] * 12 + ["tie"] * 5 + ["loss"] * 3
    large = small * 100
    cats = ("win", "tie", "loss")
    a = report.bootstrap_intervals(small, cats, samples=2000, seed=0)
    b = report.bootstrap_intervals(large, cats, seed=0)
    for c, share in (("win", 60.0), ("tie", 25.0), ("loss", 15.0)):
        assert a[c][0] <= share <= a[c][1] and b[c][0] <= share <= b[c][1]
        assert b[c][1] - b[c][0] < (a[c][1] - a[c][0]) / 5  # ~1/sqrt(100) of the width
    assert 30 <= a["win"][1] - a["win"][0] <= 50  # about +-21 points for 20 prompts at 60%
    assert report.bootstrap_intervals(large, cats, seed=0) == b  # seeded: the same report every time
    assert report.bootstrap_intervals(large, cats, seed=1) != b
    assert all(math.isnan(v) for iv in report.bootstrap_intervals([], cats).values() for v in iv)
    assert report.bootstrap_intervals(["tie"] * 5, cats)["tie"] == (100.0, 100.0)


def check_png(path, min_width=400):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 0
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[2] in (3, 4) and image.shape[1] >= min_width and image.shape[0] >= 100
    assert np.ptp(image[..., :3]) > 0  # not blank


def test_report_tables_and_charts(tmp_path):
    alpaca = pair_cache(tmp_path / "alpaca.jsonl", ["win"] * 6 + ["tie"] * 3 + ["loss"] + ["fail"])
    gpt4 = pair_cache(tmp_path / "gpt4.jsonl", ["win"] * 1 + ["tie"] * 1 + ["loss"] * 2)
    ratings = rating_cache(tmp_path / "abs.jsonl", ["Excellent"] * 5 + ["Pass"] * 4 + ["Fail"] + ["fail"] * 2)
    comparisons = [report.pairwise_distribution(name, str(path)) for name, path in
                   report.parse_pairwise_flag(f"Alpaca 65B={alpaca}, {gpt4}")]
    rated = report.absolute_distribution("LIMA", str(ratings))
    text = report.write_report(str(tmp_path / "out"), comparisons, rated, samples=500, seed=0)

    assert comparisons[1].name == "alpaca-65b"  # unnamed: the baseline's recorded generator
    md = (tmp_path / "out" / "report.md").read_text()
    assert md == text
    alpaca_row = next(ln for ln in md.splitlines() if ln.startswith("| Alpaca 65B |"))
    cells = [c.strip() for c in alpaca_row.strip("|").split("|")]
    assert cells[:2] == ["Alpaca 65B", "10"] and cells[5] == "1"
    assert [c.split("%")[0] for c in cells[2:5]] == ["60.0", "30.0", "10.0"]
    gpt4_row = next(ln for ln in md.splitlines() if ln.startswith("| alpaca-65b |"))
    assert "| 4 | 25.0% [" in gpt4_row and "| 50.0% [" in gpt4_row and gpt4_row.endswith("| 0 |")
    assert "| LIMA wins | Tie | LIMA loses | Excluded |" in md
    assert "Excluded: 1 prompt in all with a failed or missing judgment, not counted as ties." in md
    assert "| Excellent | 5 | 50.0% [" in md and "| Pass | 4 | 40.0% [" in md and "| Fail | 1 | 10.0% [" in md
    assert "Rated: 10 responses." in md and "Excluded: 2 responses" in md

    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    alp = summary["pairwise"][0]
    assert alp["pct"] == {"win": 60.0, "tie": 30.0, "loss": 10.0} and alp["excluded"] == 1 and alp["judged"] == 10
    for c, (lo, hi) in alp["ci95"].items():
        assert lo <= alp["pct"][c] <= hi
    assert summary["absolute"]["counts"] == {"Fail": 1, "Pass": 4, "Excellent": 5}
    check_png(tmp_path / "out" / "pairwise.png")
    check_png(tmp_path / "out" / "absolute.png")


def test_report_errors(tmp_path):
    with pytest.raises(LimaError, match="no such file"):
        report.pairwise_distribution("x", str(tmp_path / "absent.jsonl"))
    ratings = rating_cache(tmp_path / "abs.jsonl", ["Pass"])
    with pytest.raises(LimaError, match="no pairwise judgments"):
        report.pairwise_distribution("x", str(ratings))
    with pytest.raises(LimaError, match="NAME=PATH"):
        report.parse_pairwise_flag("=x.jsonl")
    # Two judges in one cache: pick one.
    path = pair_cache(tmp_path / "p.jsonl", ["win", "loss"])
    ours = {"p0": make_record(["TAG-0 question"], "OURS 0", "lima")}
    base = {"p0": make_record(["TAG-0 question"], "BASE 0", "alpaca")}
    judge_pairwise(ours, base, TableJudge({"0": "loss"}, name="second-judge"), JudgmentCache(path), progress=False)
    with pytest.raises(LimaError, match="several judges.*--judge_model"):
        report.pairwise_distribution("x", str(path))
    assert report.pairwise_distribution("x", str(path), judge="table-judge").counts == {"win": 1, "tie": 0, "loss": 1}
    assert report.pairwise_distribution("x", str(path), judge="second-judge").counts == {"win": 0, "tie": 0, "loss": 1}


def test_a_cache_holding_two_baselines_is_refused(tmp_path):
    """ours vs epoch 1 on 2 prompts and vs epoch 2 on 1 were once reported as "epoch 2: 3 prompts"."""
    path = tmp_path / "mixed.jsonl"
    judge = TableJudge({"0": "win", "1": "win", "2": "loss"})
    for baseline, tags in (("epoch1", ["0", "1"]), ("epoch2", ["2"])):
        ours = {f"p{t}": make_record([f"TAG-{t} question"], f"OURS {t}", "lima") for t in tags}
        base = {f"p{t}": make_record([f"TAG-{t} question"], f"BASE {t}", baseline) for t in tags}
        judge_pairwise(ours, base, judge, JudgmentCache(path), progress=False)
    with pytest.raises(LimaError) as e:
        report.pairwise_distribution(None, str(path))
    assert str(e.value) == (f"{path} holds judgments of several pairs of generators (lima vs epoch1: 2 prompts; "
                            "lima vs epoch2: 1 prompts); judge each baseline into a --cache of its own")


def test_report_command(tmp_path):
    pair_cache(tmp_path / "a.jsonl", ["win", "win", "tie", "loss"])
    rating_cache(tmp_path / "abs.jsonl", ["Pass", "Excellent"])
    out = tmp_path / "out"
    r = run_cli("lima_jax.evaluate.report", f"--pairwise=Alpaca 65B={tmp_path / 'a.jsonl'}",
                f"--absolute={tmp_path / 'abs.jsonl'}", f"--out_dir={out}", "--bootstrap=200")
    assert r.returncode == 0, r.stderr
    assert "| Alpaca 65B | 4 | 50.0% [" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["absolute.png", "pairwise.png", "report.json", "report.md"]
    r = run_cli("lima_jax.evaluate.report", f"--out_dir={out}")
    assert r.returncode == 2 and r.stderr.strip() == "error: give --pairwise=NAME=CACHE[,...] and/or --absolute=CACHE"


def test_report_refuses_to_overwrite_an_existing_report_unless_told(tmp_path):
    """issue 10 item 18: a second `report --out_dir=SAME` silently replaced the first report."""
    pair_cache(tmp_path / "a.jsonl", ["win", "win", "tie", "loss"])
    pair_cache(tmp_path / "b.jsonl", ["loss", "loss"])
    out = tmp_path / "out"
    args = (f"--out_dir={out}", "--bootstrap=50")
    assert run_cli("lima_jax.evaluate.report", f"--pairwise=A={tmp_path / 'a.jsonl'}", *args).returncode == 0
    first = (out / "report.md").read_text()
    r = run_cli("lima_jax.evaluate.report", f"--pairwise=B={tmp_path / 'b.jsonl'}", *args)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {out / 'report.md'} exists; pass --overwrite to replace the report"
    assert (out / "report.md").read_text() == first
    r = run_cli("lima_jax.evaluate.report", f"--pairwise=B={tmp_path / 'b.jsonl'}", "--overwrite", *args)
    assert r.returncode == 0, r.stderr
    assert "| B | 2 |" in (out / "report.md").read_text()


# Auditable verdicts (issue 13 item 4): ties told apart, position consistency, lengths, the
# length-controlled win rate, agreement with human labels, charts that say what they show.

from lima_jax.evaluate import audit  # noqa: E402


class PlannedJudge:
    """A judge whose verdict for each prompt and order follows a rule of the two answers' lengths and
    a per-prompt draw, seeded by the prompt and the order, so that a rerun gives the same verdicts."""

    def __init__(self, rule, name: str = "planned-judge"):
        self.rule = rule  # (tag, ours_len, base_len, rng) -> "win" / "tie" / "loss" (from our side)
        self.name = name

    def verdict(self, prompt_messages, choices):
        text = prompt_messages[-1]["content"]
        tag = int(text.split("TAG-")[1].split()[0])
        ours_is_a = text.index("OURS") < text.index("BASE")
        ours_len = len(text.split("OURS")[1].split()[0])
        base_len = len(text.split("BASE")[1].split()[0])
        outcome = self.rule(tag, ours_len, base_len, np.random.default_rng([tag, int(ours_is_a)]))
        letter = {"win": "A" if ours_is_a else "B", "loss": "B" if ours_is_a else "A", "tie": "C"}[outcome]
        return letter, f"Verdict: {letter}"


def length_pairs(n: int = 300, longer_share: float = 0.75, seed: int = 0) -> list[tuple[int, int]]:
    """(ours, baseline) answer lengths: ours about 1.5 times longer on `longer_share` of the prompts,
    1.5 times shorter on the rest."""
    rng = np.random.default_rng(seed)
    base = rng.lognormal(5.5, 0.5, n)
    ours = base * np.where(rng.random(n) < longer_share, 1.5, 1 / 1.5) * rng.lognormal(0, 0.2, n)
    return [(max(1, int(o)), max(1, int(b))) for o, b in zip(ours, base)]


def judged_lengths(path, lengths: list[tuple[int, int]], rule) -> str:
    ours = {f"p{i}": make_record([f"TAG-{i} question"], "OURS " + "x" * o, "lima") for i, (o, _) in enumerate(lengths)}
    base = {f"p{i}": make_record([f"TAG-{i} question"], "BASE " + "y" * b, "alpaca-65b") for i, (_, b) in enumerate(lengths)}
    judge_pairwise(ours, base, PlannedJudge(rule), JudgmentCache(path), progress=False)
    return str(path)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_a_judge_that_only_prefers_longer_answers_has_a_length_controlled_win_rate_near_half(tmp_path):
    lengths = length_pairs(1000)
    deltas = np.array([o - b for o, b in lengths])
    sd = deltas.std(ddof=1)

    def prefers_longer(tag, ours_len, base_len, rng):  # a noisy judge that sees nothing but length
        p_ours = sigmoid(2.0 * math.tanh((ours_len - base_len) / sd))
        return "win" if rng.random() < p_ours else "loss"

    d = report.pairwise_distribution(None, judged_lengths(tmp_path / "c.jsonl", lengths, prefers_longer), samples=400)
    lc = d.audit.length_controlled
    assert lc.prompts == 1000
    assert 60 <= lc.win_rate <= 70  # the raw preference rewards length
    assert 46 <= lc.lc_win_rate <= 54 and lc.lc_ci[0] <= 50 <= lc.lc_ci[1]
    assert 1.5 <= lc.length_coef <= 2.6  # the judge's own slope, 2, recovered
    assert lc.win_rate_ci[0] > 55  # and the raw figure's interval excludes a fair 50%

    def always_longer(tag, ours_len, base_len, rng):  # deterministic: length separates the verdicts
        return "win" if ours_len > base_len else "loss"

    d = report.pairwise_distribution(None, judged_lengths(tmp_path / "d.jsonl", lengths, always_longer), samples=200)
    lc = d.audit.length_controlled
    assert lc.win_rate == pytest.approx(100 * np.mean(deltas > 0)) and lc.win_rate > 70
    assert abs(lc.lc_win_rate - 50) < 10 and lc.length_coef > 10


def test_a_judge_blind_to_length_keeps_its_win_rate_when_length_is_controlled(tmp_path):
    lengths = length_pairs(seed=1)
    rank = {int(i): r for r, i in enumerate(np.argsort([o - b for o, b in lengths]))}

    def quality(tag, ours_len, base_len, rng):  # ours wins 7 in every 10 prompts along the length difference
        return "win" if rank[tag] % 10 < 7 else "loss"

    d = report.pairwise_distribution(None, judged_lengths(tmp_path / "c.jsonl", lengths, quality), samples=200)
    lc = d.audit.length_controlled
    assert lc.win_rate == 70.0 and abs(lc.lc_win_rate - 70) < 1 and abs(lc.length_coef) < 0.2


def test_the_logistic_fit_recovers_known_coefficients_and_an_intercept_only_fit_is_the_mean():
    rng = np.random.default_rng(0)
    x = np.tanh(rng.normal(size=20000))
    y = (rng.random(20000) < 1 / (1 + np.exp(-(0.5 + 1.5 * x)))).astype(float)
    coef = audit.logistic_fit(np.stack([np.ones_like(x), x], 1), y, np.ones((1, len(y))))[0]
    assert coef == pytest.approx([0.5, 1.5], abs=0.08)
    soft = np.array([0, 0.25, 0.5, 1, 1, 0.75])
    (b,) = audit.logistic_fit(np.ones((6, 1)), soft, np.ones((1, 6)), ridge=0.0)[0]
    assert sigmoid(b) == pytest.approx(soft.mean(), abs=1e-9)
    # Equal lengths everywhere: no length term, the LC win rate is the win rate with ties half.
    lc = audit.length_controlled_win_rate(soft, [10] * 6, [10] * 6, samples=100)
    assert lc.length_coef == 0 and lc.lc_win_rate == pytest.approx(lc.win_rate, abs=0.1)
    assert lc.win_rate == pytest.approx(100 * soft.mean())
