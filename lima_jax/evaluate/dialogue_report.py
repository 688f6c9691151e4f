"""What LIMA §6 reports of its dialogues, per checkpoint: the share of assistant turns rated Fail / Pass
/ Excellent (Figure 7), the same per turn position, how many conversations fail within 3 interactions,
and, side by side, in how many conversations a checkpoint does better than the first one.

"Fails within 3 interactions": a Fail among the dialogue's first three assistant turns (the paper's
"fail to follow the prompt within 3 interactions"; a dialogue with an unrated turn among those, and
no Fail, is counted as unknown). "Better in a conversation": a higher mean rating over its turns
(Fail 0, Pass 1, Excellent 2), our reading of the paper's per-conversation comparison.
"""
from __future__ import annotations

import json
import statistics
from typing import Any, Sequence

from lima_jax.evaluate import reporting
from lima_jax.evaluate.dialogues import Rated
from lima_jax.evaluate.ratings import RATINGS
from lima_jax.storage.paths import user_path, write_atomically

WITHIN = 3  # interactions
SCORE = {rating: i for i, rating in enumerate(RATINGS)}  # Fail 0, Pass 1, Excellent 2
CHART = "dialogue_ratings.png"


def _dist(name: str, ratings: list[str], judge: str, samples: int, seed: int) -> reporting.Distribution:
    labels = {str(i): r for i, r in enumerate(ratings)}  # unrated turns ("failed", "missing") are excluded
    return reporting._distribution(name, labels, RATINGS, {judge}, samples, seed)


def fails_within(turns: Sequence[str], n: int = WITHIN) -> bool | None:
    """Whether one of the first `n` turns is a Fail; None when unknown (an unrated turn, no Fail)."""
    first = list(turns[:n])
    if "Fail" in first:
        return True
    return None if any(r not in RATINGS for r in first) else False


def mean_score(turns: Sequence[str]) -> float | None:
    scores = [SCORE[r] for r in turns if r in SCORE]
    return statistics.fmean(scores) if scores else None


def summarize(rated: Rated, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    every = [r for turns in rated.ratings.values() for r in turns]
    overall = _dist(rated.name, every, rated.judge, samples, seed)
    positions = max(map(len, rated.ratings.values()))
    per_turn = {}
    for k in range(positions):
        at_k = [turns[k] for turns in rated.ratings.values() if len(turns) > k]
        d = _dist(f"turn {k + 1}", at_k, rated.judge, samples, seed)
        per_turn[str(k + 1)] = {"counts": d.counts, "unrated": d.excluded}
    within = [fails_within(turns) for turns in rated.ratings.values()]
    return {
        "name": rated.name, "judge": rated.judge, "conversations": len(rated.ratings), "turns": len(every),
        "overall": overall.to_json(),
        "per_turn": per_turn,
        f"failed_within_{WITHIN}": sum(w is True for w in within),
        f"unknown_within_{WITHIN}": sum(w is None for w in within),
        "dialogues": rated.ratings,
        "asked_now": rated.stats.asked,
    }


def compare(first: Rated, other: Rated) -> dict[str, int]:
    """Conversations where `other` has a higher, equal or lower mean rating than `first`."""
    out = {"better": 0, "tied": 0, "worse": 0, "unrated": 0}
    for did, turns in first.ratings.items():
        a, b = mean_score(turns), mean_score(other.ratings[did])
        if a is None or b is None:
            out["unrated"] += 1
        else:
            out["better" if b > a else "tied" if b == a else "worse"] += 1
    return out


def markdown(summaries: Sequence[dict[str, Any]], comparisons: dict[str, dict[str, int]]) -> str:
    judges = sorted({s["judge"] for s in summaries})
    lines = ["# Multi-turn dialogues (LIMA §6)", "",
             f"Judge: {', '.join(judges)}. Every assistant turn rated with the conversation before it.", "",
             "| checkpoint | conversations | turns rated | Excellent | Pass | Fail | unrated "
             f"| conversations failing within {WITHIN} |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        o = s["overall"]
        cells = [f"{o['counts'][r]} ({o['pct'][r] if o['pct'][r] is not None else 'n/a'}%)" for r in reversed(RATINGS)]
        unknown = f" (+{s[f'unknown_within_{WITHIN}']} unknown)" if s[f"unknown_within_{WITHIN}"] else ""
        lines.append(f"| {s['name']} | {s['conversations']} | {o['judged']} | {' | '.join(cells)} | {o['excluded']} "
                     f"| {s[f'failed_within_{WITHIN}']} of {s['conversations']}{unknown} |")
    lines += ["", "Per turn position (Excellent / Pass / Fail):", "",
              "| checkpoint | " + " | ".join(f"turn {k}" for k in summaries[0]["per_turn"]) + " |",
              "|---|" + "---|" * len(summaries[0]["per_turn"])]
    for s in summaries:
        cells = [f"{t['counts']['Excellent']} / {t['counts']['Pass']} / {t['counts']['Fail']}" for t in s["per_turn"].values()]
        lines.append(f"| {s['name']} | " + " | ".join(cells) + " |")
    for name, c in comparisons.items():
        lines += ["", f"{name} against {summaries[0]['name']}, per conversation (mean rating): better in "
                      f"{c['better']}, tied in {c['tied']}, worse in {c['worse']}"
                      + (f", {c['unrated']} unrated" if c["unrated"] else "") + "."]
    lines += ["", "Paper (LIMA 65B, 10 conversations): zero-shot 45.2% Excellent, 19.1% Pass, 35.7% Fail, 6 of 10 "
                  "failing within 3 interactions; with 30 dialogue chains 76.1% / 21.7% / 2.2%, 1 of 10; better in "
                  "7 of 10 conversations, tied in 3.", "", f"Chart: {CHART}"]
    return "\n".join(lines) + "\n"


def write(out_dir: str, rated: Sequence[Rated], samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """report.md, report.json and the Figure-7 chart in `out_dir`, rewritten from the ratings (they are
    derived: the transcripts and the judgment cache are the record). Returns report.json's content."""
    out = user_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [summarize(r, samples, seed) for r in rated]
    comparisons = {r.name: compare(rated[0], r) for r in rated[1:]}
    report = {"checkpoints": summaries, "compared_with_first": comparisons,
              "bootstrap": {"samples": samples, "seed": seed}}
    write_atomically(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    text = markdown(summaries, comparisons)
    write_atomically(out / "report.md", text)
    rows = [_dist(r.name, [x for t in r.ratings.values() for x in t], r.judge, samples, seed) for r in rated]
    fig = reporting.stacked_bars(rows, RATINGS, reporting._RATING_COLORS, "% of assistant turns",
                                 "Multi-turn dialogues: the rating of each assistant turn")
    reporting.save_png(fig, out / CHART)
    return report
