"""The report: percentages, bootstrap intervals, report.md and the PNG charts, from judgment caches
made by an in-process judge (which also shows that any `Judge` plugs in, not only the HTTP one)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lima_jax.errors import LimaError
from lima_jax.evaluate import stats
from lima_jax.evaluate.charts import pairwise_chart, stacked_bars
from lima_jax.evaluate.cli import parse_pairwise_flag
from lima_jax.evaluate.protocols.absolute import absolute_distribution
from lima_jax.evaluate.protocols.pairwise import pairwise_distribution
from lima_jax.evaluate.tables import markdown, write_report
from lima_jax.evaluate.protocols.absolute import judge_absolute
from lima_jax.evaluate.judge.protocol import Judge, JudgeFailure
from lima_jax.evaluate.judge.cache import JudgmentCache
from lima_jax.evaluate.protocols.pairwise import judge_pairwise
from lima_jax.evaluate.answers.records import make_record
from support.charts import check_png
from support.commands import call_command


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
        if planned == "first":  # pure position bias: whichever answer is shown first
            return "A", "Verdict: A"
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
    a = stats.bootstrap_intervals(small, cats, samples=2000, seed=0)
    b = stats.bootstrap_intervals(large, cats, seed=0)
    for c, share in (("win", 60.0), ("tie", 25.0), ("loss", 15.0)):
        assert a[c][0] <= share <= a[c][1] and b[c][0] <= share <= b[c][1]
        assert b[c][1] - b[c][0] < (a[c][1] - a[c][0]) / 5  # ~1/sqrt(100) of the width
    assert 30 <= a["win"][1] - a["win"][0] <= 50  # about +-21 points for 20 prompts at 60%
    assert stats.bootstrap_intervals(large, cats, seed=0) == b  # seeded: the same report every time
    assert stats.bootstrap_intervals(large, cats, seed=1) != b
    assert all(math.isnan(v) for iv in stats.bootstrap_intervals([], cats).values() for v in iv)
    assert stats.bootstrap_intervals(["tie"] * 5, cats)["tie"] == (100.0, 100.0)


def test_report_tables_and_charts(tmp_path):
    alpaca = pair_cache(tmp_path / "alpaca.jsonl", ["win"] * 6 + ["tie"] * 3 + ["loss"] + ["fail"])
    gpt4 = pair_cache(tmp_path / "gpt4.jsonl", ["win"] * 1 + ["tie"] * 1 + ["loss"] * 2)
    ratings = rating_cache(tmp_path / "abs.jsonl", ["Excellent"] * 5 + ["Pass"] * 4 + ["Fail"] + ["fail"] * 2)
    comparisons = [pairwise_distribution(name, str(path)) for name, path in
                   parse_pairwise_flag(f"Alpaca 65B={alpaca}, {gpt4}")]
    rated = absolute_distribution("LIMA", str(ratings))
    text = write_report(str(tmp_path / "out"), comparisons, rated, samples=500, seed=0)

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
        pairwise_distribution("x", str(tmp_path / "absent.jsonl"))
    ratings = rating_cache(tmp_path / "abs.jsonl", ["Pass"])
    with pytest.raises(LimaError, match="no pairwise judgments"):
        pairwise_distribution("x", str(ratings))
    with pytest.raises(LimaError, match="NAME=PATH"):
        parse_pairwise_flag("=x.jsonl")
    # Two judges in one cache: pick one.
    path = pair_cache(tmp_path / "p.jsonl", ["win", "loss"])
    ours = {"p0": make_record(["TAG-0 question"], "OURS 0", "lima")}
    base = {"p0": make_record(["TAG-0 question"], "BASE 0", "alpaca")}
    judge_pairwise(ours, base, TableJudge({"0": "loss"}, name="second-judge"), JudgmentCache(path), progress=False)
    with pytest.raises(LimaError, match="several judges.*--judge_model"):
        pairwise_distribution("x", str(path))
    assert pairwise_distribution("x", str(path), judge="table-judge").counts == {"win": 1, "tie": 0, "loss": 1}
    assert pairwise_distribution("x", str(path), judge="second-judge").counts == {"win": 0, "tie": 0, "loss": 1}


def test_a_cache_holding_two_baselines_is_refused(tmp_path):
    """ours vs epoch 1 on 2 prompts and vs epoch 2 on 1 were once reported as "epoch 2: 3 prompts"."""
    path = tmp_path / "mixed.jsonl"
    judge = TableJudge({"0": "win", "1": "win", "2": "loss"})
    for baseline, tags in (("epoch1", ["0", "1"]), ("epoch2", ["2"])):
        ours = {f"p{t}": make_record([f"TAG-{t} question"], f"OURS {t}", "lima") for t in tags}
        base = {f"p{t}": make_record([f"TAG-{t} question"], f"BASE {t}", baseline) for t in tags}
        judge_pairwise(ours, base, judge, JudgmentCache(path), progress=False)
    with pytest.raises(LimaError) as e:
        pairwise_distribution(None, str(path))
    assert str(e.value) == (f"{path} holds judgments of several pairs of generators (lima vs epoch1: 2 prompts; "
                            "lima vs epoch2: 1 prompts); judge each baseline into a --cache of its own")


def test_report_command(tmp_path):
    pair_cache(tmp_path / "a.jsonl", ["win", "win", "tie", "loss"])
    rating_cache(tmp_path / "abs.jsonl", ["Pass", "Excellent"])
    out = tmp_path / "out"
    r = call_command("lima_jax.evaluate.report", f"--pairwise=Alpaca 65B={tmp_path / 'a.jsonl'}",
                f"--absolute={tmp_path / 'abs.jsonl'}", f"--out_dir={out}", "--bootstrap=200")
    assert r.returncode == 0, r.stderr
    assert "| Alpaca 65B | 4 | 50.0% [" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["absolute.png", "pairwise.png", "report.json", "report.md"]
    r = call_command("lima_jax.evaluate.report", f"--out_dir={out}")
    assert r.returncode == 2 and r.stderr.strip() == ("error: give --pairwise=NAME=CACHE[,...], --absolute=CACHE and/or "
                                                "--likert=NAME=CACHE[,...]")


def test_report_refuses_to_overwrite_an_existing_report_unless_told(tmp_path):
    """issue 10 item 18: a second `report --out_dir=SAME` silently replaced the first report."""
    pair_cache(tmp_path / "a.jsonl", ["win", "win", "tie", "loss"])
    pair_cache(tmp_path / "b.jsonl", ["loss", "loss"])
    out = tmp_path / "out"
    args = (f"--out_dir={out}", "--bootstrap=50")
    assert call_command("lima_jax.evaluate.report", f"--pairwise=A={tmp_path / 'a.jsonl'}", *args).returncode == 0
    first = (out / "report.md").read_text()
    r = call_command("lima_jax.evaluate.report", f"--pairwise=B={tmp_path / 'b.jsonl'}", *args)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {out / 'report.md'} exists; pass --overwrite to replace the report"
    assert (out / "report.md").read_text() == first
    r = call_command("lima_jax.evaluate.report", f"--pairwise=B={tmp_path / 'b.jsonl'}", "--overwrite", *args)
    assert r.returncode == 0, r.stderr
    assert "| B | 2 |" in (out / "report.md").read_text()


# Auditable verdicts (issue 13 item 4): ties told apart, position consistency, lengths, the
# length-controlled win rate, agreement with human labels, charts that say what they show.

from lima_jax.evaluate.labels import read_human_labels  # noqa: E402


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
    base = {f"p{i}": make_record([f"TAG-{i} question"], "BASE " + "y" * b, "alpaca-65b")
            for i, (_, b) in enumerate(lengths)}
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

    d = pairwise_distribution(None, judged_lengths(tmp_path / "c.jsonl", lengths, prefers_longer), samples=400)
    lc = d.audit.length_controlled
    assert lc.prompts == 1000
    assert 60 <= lc.win_rate <= 70  # the raw preference rewards length
    assert 46 <= lc.lc_win_rate <= 54 and lc.lc_ci[0] <= 50 <= lc.lc_ci[1]
    assert 1.5 <= lc.length_coef <= 2.6  # the judge's own slope, 2, recovered
    assert lc.win_rate_ci[0] > 55  # and the raw figure's interval excludes a fair 50%

    def always_longer(tag, ours_len, base_len, rng):  # deterministic: length separates the verdicts
        return "win" if ours_len > base_len else "loss"

    d = pairwise_distribution(None, judged_lengths(tmp_path / "d.jsonl", lengths, always_longer), samples=200)
    lc = d.audit.length_controlled
    assert lc.win_rate == pytest.approx(100 * np.mean(deltas > 0)) and lc.win_rate > 70
    assert abs(lc.lc_win_rate - 50) < 10 and lc.length_coef > 10


def test_a_judge_blind_to_length_keeps_its_win_rate_when_length_is_controlled(tmp_path):
    lengths = length_pairs(seed=1)
    rank = {int(i): r for r, i in enumerate(np.argsort([o - b for o, b in lengths]))}

    def quality(tag, ours_len, base_len, rng):  # ours wins 7 in every 10 prompts along the length difference
        return "win" if rank[tag] % 10 < 7 else "loss"

    d = pairwise_distribution(None, judged_lengths(tmp_path / "c.jsonl", lengths, quality), samples=200)
    lc = d.audit.length_controlled
    assert lc.win_rate == 70.0 and abs(lc.lc_win_rate - 70) < 1 and abs(lc.length_coef) < 0.2


def test_the_logistic_fit_recovers_known_coefficients_and_an_intercept_only_fit_is_the_mean():
    rng = np.random.default_rng(0)
    x = np.tanh(rng.normal(size=20000))
    y = (rng.random(20000) < 1 / (1 + np.exp(-(0.5 + 1.5 * x)))).astype(float)
    coef = stats.logistic_fit(np.stack([np.ones_like(x), x], 1), y, np.ones((1, len(y))))[0]
    assert coef == pytest.approx([0.5, 1.5], abs=0.08)
    soft = np.array([0, 0.25, 0.5, 1, 1, 0.75])
    (b,) = stats.logistic_fit(np.ones((6, 1)), soft, np.ones((1, 6)), ridge=0.0)[0]
    assert sigmoid(b) == pytest.approx(soft.mean(), abs=1e-9)
    # Equal lengths everywhere: no length term, the LC win rate is the win rate with ties half.
    lc = stats.length_controlled_win_rate(soft, [10] * 6, [10] * 6, samples=100)
    assert lc.length_coef == 0 and lc.lc_win_rate == pytest.approx(lc.win_rate, abs=0.1)
    assert lc.win_rate == pytest.approx(100 * soft.mean())


def test_ties_are_told_apart_from_orders_that_disagree(tmp_path):
    """The demo report once showed "100% tie" with no hint that all 30 were disagreements."""
    biased = pairwise_distribution("biased", str(pair_cache(tmp_path / "a.jsonl", ["first"] * 30)), samples=200)
    assert biased.counts == {"win": 0, "tie": 30, "loss": 0}
    assert biased.audit.split.counts == {"win": 0, "tie_neither": 0, "tie_disagreed": 30, "loss": 0}
    assert biased.audit.consistency.counts == {"agreed": 0, "disagreed": 30}
    mixed = pairwise_distribution("mixed", str(pair_cache(
        tmp_path / "b.jsonl", ["win"] * 4 + ["tie"] * 3 + ["first"] * 2 + ["loss"] + ["fail"])), samples=200)
    assert mixed.audit.split.counts == {"win": 4, "tie_neither": 3, "tie_disagreed": 2, "loss": 1}
    assert mixed.audit.consistency.pct("agreed") == 80.0 and mixed.audit.consistency.total == 10
    md = markdown([biased, mixed], None, "LIMA", 200, 0)
    assert "| biased | 0.0% [0.0, 0.0] (0) | 100.0% [100.0, 100.0] (30) | 0.0% [0.0, 0.0] (0/30) |" in md
    assert "| mixed | 30.0% [" in md and "] (3) | 20.0% [" in md and "] (2) | 80.0% [" in md and "] (8/10) |" in md
    j = mixed.to_json()
    assert j["ties"]["judge_said_neither"] == 3 and j["ties"]["orders_disagreed"] == 2
    assert j["ties"]["pct"] == {"tie_neither": 30.0, "tie_disagreed": 20.0}
    assert j["position_consistency"]["agreed"] == 8 and j["position_consistency"]["pct"] == 80.0
    lo, hi = j["position_consistency"]["ci95"]
    assert lo < 80 < hi
    # Lengths, recorded with the judgments: "OURS i" and "BASE i", 6 characters (p10 failed: not counted).
    assert j["length"] == {"unit": "characters", "prompts": 10, "unmeasured": 0,
                           "ours": {"mean": 6.0, "median": 6.0}, "baseline": {"mean": 6.0, "median": 6.0}}
    assert j["generators"] == {"ours": "lima", "baseline": "alpaca-65b"}


def test_tie_discounted_accuracy_scores_as_lima_does():
    assert [stats.tie_discounted(a, b) for a, b in [("win", "win"), ("tie", "tie"), ("win", "tie"), ("tie", "loss"),
                                                    ("win", "loss")]] == [1.0, 1.0, 0.5, 0.5, 0.0]


def write_labels(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_agreement_with_human_labels(tmp_path):
    cache = pair_cache(tmp_path / "a.jsonl", ["win", "win", "tie", "loss", "first", "fail"])
    # The judge: p0 win, p1 win, p2 tie, p3 loss, p4 tie (orders disagree), p5 no verdict.
    from lima_jax.evaluate.answers.records import prompt_id

    labels = read_human_labels(write_labels(tmp_path / "labels.jsonl", [
        {"id": "p0", "baseline": "alpaca-65b", "label": "win"},  # 1
        {"id": "p1", "baseline": "alpaca-65b", "label": "loss"},  # 0
        {"id": "p2", "baseline": "alpaca-65b", "label": "win", "annotator": "ann1"},  # 0.5
        {"id": "p2", "baseline": "alpaca-65b", "label": "tie", "annotator": "ann2"},  # 1
        {"id": "p3", "baseline": "alpaca-65b", "label": "tie", "ours": "lima"},  # 0.5
        {"id": "p4", "baseline": "alpaca-65b", "label": "tie"},  # 1
        {"id": "p5", "baseline": "alpaca-65b", "label": "win"},  # not judged
        {"id": "p0", "baseline": "gpt-4", "label": "loss"},  # another baseline: not scored here
    ]))
    assert prompt_id(["TAG-0 question"]) != "p0"  # the ids are the response files' own, as in the cache
    d = pairwise_distribution(None, str(cache), samples=300, labels=labels)
    h = d.audit.human
    assert (h.labels, h.prompts, h.same, h.half, h.unjudged) == (6, 5, 3, 2, 1)
    assert h.agreement == pytest.approx(100 * 4 / 6)
    assert h.ci[0] < h.agreement < h.ci[1]
    md = markdown([d], None, "LIMA", 300, 0, human_labels="labels.jsonl")
    assert "### Agreement with human labels (labels.jsonl)" in md
    assert "| alpaca-65b | 6 | 5 | 66.7% [" in md and "] | 3 | 2 | 1 |" in md
    assert d.to_json()["human_agreement"]["agreement"] == 66.67


def test_human_labels_may_be_keyed_by_prompt_and_bad_lines_are_named(tmp_path):
    from lima_jax.evaluate.answers.records import prompt_id

    good = read_human_labels(write_labels(tmp_path / "ok.jsonl", [
        {"prompt": ["Hi", "Hello", "Why?"], "baseline": "b", "label": "loss"}]))
    assert good[0].prompt_id == prompt_id(["Hi", "Hello", "Why?"]) and good[0].label == "loss"
    bad = tmp_path / "bad.jsonl"
    for rows, message in [
        ([{"id": "p0", "baseline": "b", "label": "A"}], r"bad.jsonl:1: 'label' must be one of 'win', 'tie', 'loss'"),
        ([{"id": "p0", "label": "win"}], r"bad.jsonl:1: missing 'baseline'"),
        ([{"baseline": "b", "label": "win"}], r"bad.jsonl:1: missing 'id'"),
        ([{"id": "p0", "baseline": "b", "label": "win"}] * 2,
         r"bad.jsonl:2: prompt 'p0' vs 'b' is already labelled on line 1"),
    ]:
        with pytest.raises(LimaError, match=message):
            read_human_labels(write_labels(bad, rows))
    cache = pair_cache(tmp_path / "a.jsonl", ["win"])
    wrong_ours = read_human_labels(write_labels(bad, [{"id": "p0", "baseline": "alpaca-65b", "label": "win",
                                                             "ours": "other"}]))
    with pytest.raises(LimaError, match="bad.jsonl:1: labels 'other' vs 'alpaca-65b', but the cache judged 'lima'"):
        pairwise_distribution(None, str(cache), labels=wrong_ours)


def test_every_chart_has_a_title_the_judge_n_and_95_percent_intervals(tmp_path):
    comparisons = [pairwise_distribution(name, str(pair_cache(tmp_path / f"{name}.jsonl", plan)), samples=200)
                   for name, plan in (("A", ["win"] * 6 + ["first"] * 2 + ["loss"] * 2), ("B", ["tie", "loss"]))]
    fig = pairwise_chart(comparisons, "LIMA")
    ax = fig.axes[0]
    assert fig._suptitle.get_text() == "Pairwise preference: LIMA vs each baseline"
    assert ax.get_title().startswith("judge: table-judge · error bars: 95% bootstrap intervals of 'LIMA wins' and "
                                     "'LIMA loses'")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["A\n(n=10)", "B\n(n=2)"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["LIMA wins", "Tie: neither", "Tie: orders disagree",
                                                                   "LIMA loses"]
    bars = [line for c in ax.containers if hasattr(c, "lines") for line in c.lines[2]]
    spans = sorted(tuple(np.round(seg[:, 0], 1)) for b in bars for seg in b.get_segments())
    a_win, a_loss = comparisons[0].intervals["win"], comparisons[0].intervals["loss"]
    assert (round(a_win[0], 1), round(a_win[1], 1)) in spans  # A's win share interval, at the win segment's edge
    assert (round(100 - a_loss[1], 1), round(100 - a_loss[0], 1)) in spans  # its loss share, at the loss edge
    assert comparisons[1].intervals["win"] == (0.0, 0.0)
    assert len(spans) == 3  # B never wins: a zero-wide interval draws no bar (its caps would be a stray tick)
    rated = absolute_distribution(
        "LIMA", str(rating_cache(tmp_path / "abs.jsonl", ["Pass", "Fail", "Excellent"])))
    fig = stacked_bars([rated], ("Fail", "Pass", "Excellent"), ("r", "y", "g"), "%", "Absolute rating of LIMA")
    assert fig._suptitle.get_text() == "Absolute rating of LIMA" and "judge: table-judge" in fig.axes[0].get_title()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["LIMA\n(n=3)"]


def test_report_command_with_human_labels_and_response_files_for_a_cache_without_lengths(tmp_path):
    pair_cache(tmp_path / "a.jsonl", ["win", "win", "tie", "first", "loss"])
    # A cache judged before judgments recorded lengths: the report needs the response files.
    old = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    for r in old:
        del r["ours_length"], r["baseline_length"]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    labels = write_labels(tmp_path / "labels.jsonl", [{"id": "p0", "baseline": "alpaca-65b", "label": "win"},
                                                      {"id": "p3", "baseline": "alpaca-65b", "label": "loss"}])
    args = [f"--pairwise=Alpaca 65B={tmp_path / 'a.jsonl'}", "--bootstrap=100", f"--human_labels={labels}"]
    r = call_command("lima_jax.evaluate.report", *args, f"--out_dir={tmp_path / 'out1'}")
    assert r.returncode == 0, r.stderr
    assert "| Alpaca 65B | 0 | n/a | n/a | n/a |" in r.stdout  # no lengths: no LC win rate
    assert "Lengths unknown for 5 judged prompts" in r.stdout
    assert "| alpaca-65b |" not in r.stdout and "| Alpaca 65B | 2 | 2 | 75.0% [" in r.stdout  # 1 and 0.5
    from lima_jax.evaluate.answers.records import write_responses

    write_responses(tmp_path / "ours.jsonl", [make_record([f"TAG-{i} question"], f"OURS {i}", "lima", f"p{i}")
                                              for i in range(5)])
    for suffix in ("!", ""):  # a regenerated answer is not the one judged: only the judged outputs count
        write_responses(tmp_path / "base.jsonl", [make_record([f"TAG-{i} question"], f"BASE {i}" + suffix * i,
                                                              "alpaca-65b", f"p{i}") for i in range(5)])
        out = tmp_path / f"out-{len(suffix)}"
        r = call_command("lima_jax.evaluate.report", *args, f"--out_dir={out}",
                    f"--responses={tmp_path / 'ours.jsonl'},{tmp_path / 'base.jsonl'}")
        assert r.returncode == 0, r.stderr
        summary = json.loads((out / "report.json").read_text())
        alp = summary["pairwise"][0]
        assert alp["length"]["unmeasured"] == 4 * len(suffix)
        assert (alp["length_controlled"] is None) == bool(suffix)
    # The keys the report has always had, unchanged; the audit's beside them.
    assert {"name", "judged", "excluded", "judges", "counts", "pct", "ci95"} <= set(alp)
    assert alp["counts"] == {"win": 2, "tie": 2, "loss": 1} and alp["name"] == "Alpaca 65B"
    assert alp["length"]["ours"] == {"mean": 6.0, "median": 6.0} and alp["length"]["prompts"] == 5
    assert alp["length_controlled"]["prompts"] == 5 and alp["length_controlled"]["win_rate"] == 60.0
    assert alp["human_agreement"]["labels"] == 2 and alp["human_agreement"]["agreement"] == 75.0
    assert summary["human_labels"] == labels
    other = write_labels(tmp_path / "other.jsonl", [{"id": "p0", "baseline": "gpt-4", "label": "win"}])
    r = call_command("lima_jax.evaluate.report", f"--pairwise={tmp_path / 'a.jsonl'}", f"--out_dir={tmp_path / 'out3'}",
                f"--human_labels={other}")
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: {tmp_path / 'other.jsonl'}: no label names a baseline in --pairwise (labels name gpt-4; the caches "
        "judged alpaca-65b)")
