r"""Pairwise judging, as in LIMA's preference study: for every prompt answered in both files, which
answer does the judge prefer? Each pair is judged in both orders (ours as response A, then as B) to
cancel the judge's position bias. Per prompt: both orders agree -> that win/loss/tie; they disagree
-> tie. A prompt with a failed judgment is counted as failed, never as a tie, and asked again on the
next run. From a cache alone, the report's row per baseline and its audit (the ties told apart,
position consistency, lengths, the length-controlled win rate, agreement with human labels).
"""
from __future__ import annotations

import dataclasses
import functools
import statistics
import sys
from typing import Any, Mapping, Sequence

from lima_jax.errors import LimaError
from lima_jax.evaluate import stats
from lima_jax.evaluate.answers.formats import read_responses
from lima_jax.evaluate.answers.records import Record, text_hash
from lima_jax.evaluate.judge import prompts
from lima_jax.evaluate.judge.cache import (Judgment, JudgmentCache, Reading, judgment_key, read_cache,
                                          results_from_records as read_results, succeeded)
from lima_jax.evaluate.judge.protocol import Judge
from lima_jax.evaluate.judge.runner import Task, run_tasks
from lima_jax.evaluate.labels import HumanLabel
from lima_jax.evaluate.protocols.results import OUTCOME_SCORE, Judged, check_one_judge, summarize
from lima_jax.storage.paths import Path

ORDERS = ("ours_first", "baseline_first")  # ours is response A, then response B
OUTCOMES = ("win", "tie", "loss")  # from our side


def pair_key(judge: str, prompt_id: str, ours_hash: str, baseline_hash: str, order: str) -> str:
    return judgment_key("pairwise", prompts.PAIRWISE_VERSION, judge, prompt_id, ours_hash, baseline_hash, order)


def order_outcome(order: str, verdict: str) -> str:
    """Our win/tie/loss from one judgment: verdict A favours whichever answer was shown first."""
    if verdict == "C":
        return "tie"
    ours_letter = "A" if order == "ours_first" else "B"
    return "win" if verdict == ours_letter else "loss"


def combine(judgments: dict[str, Judgment | None]) -> tuple[str, bool]:
    """One prompt's result from its two judgments, and whether the orders agreed.

    "missing" when an order was never asked, "failed" when one has no verdict (kept apart from
    ties: a judge that could not answer has not said the answers are equal).
    """
    if any(judgments.get(o) is None for o in ORDERS):
        return "missing", True
    if not all(succeeded(judgments[o]) for o in ORDERS):
        return "failed", True
    seen = {order_outcome(o, judgments[o]["verdict"]) for o in ORDERS}
    return (seen.pop(), True) if len(seen) == 1 else ("tie", False)


def shared_ids(ours: dict[str, Record], baseline: dict[str, Record]) -> list[str]:
    ids = [i for i in ours if i in baseline]
    if not ids:
        raise LimaError("no prompt id appears in both response files (ids default to a hash of the prompt turns, "
                        "so the prompts must match exactly)")
    for i in ids:
        if ours[i]["prompt"] != baseline[i]["prompt"]:
            raise LimaError(f"prompt id {i!r} has different prompt turns in the two response files (a follow-up asked "
                            "after each model's own answer, like MT-Bench's second turn, is rated with "
                            "lima_jax.evaluate.absolute, not compared)")
    only_ours, only_baseline = len(ours) - len(ids), len(baseline) - len(ids)
    if only_ours or only_baseline:  # e.g. a baseline generated from an older prompt file: say what is left out
        print(f"warning: judging the {len(ids)} prompts both response files answer; left out: {only_ours} answered "
              f"only by ours, {only_baseline} only by the baseline", file=sys.stderr)
    return ids


def judge_pairwise(ours: dict[str, Record], baseline: dict[str, Record], judge: Judge, cache: JudgmentCache,
                   workers: int = 1, max_failures: int | None = None, progress: bool = True) -> Judged:
    """Judges, in both orders, every prompt answered in both files that the cache has no verdict for."""
    ids = shared_ids(ours, baseline)
    keys: dict[str, dict[str, str]] = {}
    tasks: list[Task] = []
    for pid in ids:
        mine, theirs = ours[pid], baseline[pid]
        ours_hash, baseline_hash = text_hash(mine["output"]), text_hash(theirs["output"])
        keys[pid] = {}
        for order in ORDERS:
            key = pair_key(judge.name, pid, ours_hash, baseline_hash, order)
            keys[pid][order] = key
            if cache.done(key):
                continue
            a, b = (mine, theirs) if order == "ours_first" else (theirs, mine)
            fields = {"kind": "pairwise", "version": prompts.PAIRWISE_VERSION, "prompt_id": pid, "order": order,
                      "ours_hash": ours_hash, "baseline_hash": baseline_hash,
                      "ours_generator": mine["generator"], "baseline_generator": theirs["generator"],
                      # the report's response lengths, without the response files
                      "ours_length": len(mine["output"]), "baseline_length": len(theirs["output"])}
            tasks.append(Task(key, prompts.pairwise_messages(mine["prompt"], a["output"], b["output"]),
                              prompts.PAIRWISE_CHOICES, fields))
    run = run_tasks(tasks, judge, cache, workers=workers, max_failures=max_failures, progress=progress)
    results = {pid: combine({o: cache.get(keys[pid][o]) for o in ORDERS}) for pid in ids}
    outcomes = [o for o, _ in results.values()]
    summary = {"judge": judge.name, "ours": ours[ids[0]]["generator"], "baseline": baseline[ids[0]]["generator"],
               **summarize(outcomes, OUTCOMES, "prompts", "judged"),
               "disagreed": sum(1 for _, agreed in results.values() if not agreed),
               "failed_judgments": sum(1 for pid in ids for o in ORDERS
                                       if cache.get(keys[pid][o]) is not None and not cache.done(keys[pid][o])),
               "asked": run.asked, "only_ours": len(ours) - len(ids), "only_baseline": len(baseline) - len(ids)}
    return Judged(summary, results, run)  # results: prompt id -> (outcome, orders agreed)


def _version(record: Judgment) -> tuple:
    return (record.get("version"), record.get("judge"), record.get("ours_hash"), record.get("baseline_hash"))


READING = Reading("pairwise", "a pairwise judgment without a prompt id or order", lambda pid, orders: combine(orders),
                  version=_version, slot=lambda r: r.get("order"), slots=ORDERS)
# From a cache alone, per prompt: (outcome, orders agreed); and each order's judgment (for the audit).
results_from_records = functools.partial(read_results, READING)
judgments_from_records = functools.partial(read_results, dataclasses.replace(READING, result=lambda pid, orders: orders))
SPLIT = ("win", "tie_neither", "tie_disagreed", "loss")  # the ties told apart


@dataclasses.dataclass
class PairAudit:
    """What lets a reader check a comparison's verdicts (`lima_jax.evaluate.stats`)."""

    ours: str  # the generators, as recorded in the cache
    baseline: str
    split: stats.Distribution  # win / tie (the judge said neither) / tie (the orders disagreed) / loss
    consistency: stats.Distribution  # agreed / disagreed: the share of judged prompts whose two orders agree
    lengths: dict[str, list[int]]  # "ours" / "baseline" -> per judged prompt, when known
    unmeasured: int  # judged prompts whose response lengths are unknown
    length_controlled: stats.LengthControlled | None
    human: stats.Agreement | None

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
                     "pct": {c: stats.rounded(split.pct(c)) for c in ("tie_neither", "tie_disagreed")},
                     "ci95": {c: [stats.rounded(v) for v in split.intervals[c]]
                              for c in ("tie_neither", "tie_disagreed")}},
            "position_consistency": {"agreed": self.consistency.counts["agreed"], "judged": self.consistency.total,
                                     "pct": stats.rounded(self.consistency.pct("agreed")),
                                     "ci95": [stats.rounded(v) for v in self.consistency.intervals["agreed"]]},
            "length": {"unit": stats.LENGTH_UNIT, "prompts": len(self.lengths["ours"]), "unmeasured": self.unmeasured,
                       "ours": self.length_stats("ours"), "baseline": self.length_stats("baseline")},
            "length_controlled": self.length_controlled.to_json() if self.length_controlled else None,
            "human_agreement": self.human.to_json() if self.human else None,
        }


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
    return {text_hash(r["output"]): len(r["output"]) for path in paths for r in read_responses(path).values()}


def _side_length(record: dict, side: str, lengths: Mapping[str, int]) -> int | None:
    recorded = record.get(f"{side}_length")
    return recorded if isinstance(recorded, int) else lengths.get(str(record.get(f"{side}_hash")))


def pair_audit(chosen: Mapping[str, Mapping[str, dict | None]], ours: str, baseline: str, judges: set[str],
               lengths: Mapping[str, int], labels: Sequence[HumanLabel] | None, samples: int,
               seed: int) -> PairAudit:
    """Position consistency, the ties told apart, lengths, the length-controlled win rate and the
    agreement with human labels, for one comparison's judgments (prompt -> order -> judgment)."""
    split: dict[str, str] = {}
    outcomes: dict[str, str] = {}
    preference, ours_len, base_len = [], [], []
    unmeasured = 0
    for pid, orders in chosen.items():
        outcome, agreed = combine(dict(orders))
        outcomes[pid] = outcome
        if outcome not in OUTCOMES:
            continue
        split[pid] = ("tie_neither" if agreed else "tie_disagreed") if outcome == "tie" else outcome
        record = orders[ORDERS[0]]
        mine, theirs = _side_length(record, "ours", lengths), _side_length(record, "baseline", lengths)
        if mine is None or theirs is None:
            unmeasured += 1
            continue
        ours_len.append(mine)
        base_len.append(theirs)
        preference.append(statistics.fmean(OUTCOME_SCORE[order_outcome(o, orders[o]["verdict"])]
                                           for o in ORDERS))
    consistency = {pid: "agreed" if label != "tie_disagreed" else "disagreed" for pid, label in split.items()}
    lc = None
    if preference and not unmeasured:  # on a subset of the prompts it would not be this comparison's figure
        lc = stats.length_controlled_win_rate(preference, ours_len, base_len, samples, seed)
    human = None
    if labels is not None:
        matching = [lb for lb in labels if lb.baseline == baseline]
        for lb in matching:
            if lb.ours is not None and lb.ours != ours:
                raise LimaError(f"{lb.where}: labels {lb.ours!r} vs {baseline!r}, but the cache judged {ours!r}")
        human = stats.judge_agreement(outcomes, matching, samples, seed) if matching else None
    return PairAudit(ours, baseline, stats.distribution("split", split, SPLIT, judges, samples, seed),
                     stats.distribution("consistency", consistency, ("agreed", "disagreed"), judges, samples, seed),
                     {"ours": ours_len, "baseline": base_len}, unmeasured, lc, human)


def pairwise_distribution(name: str | None, path: str, judge: str | None = None, samples: int = 1000,
                          seed: int = 0, lengths: Mapping[str, int] | None = None,
                          labels: Sequence[HumanLabel] | None = None) -> stats.Distribution:
    """One baseline's row of the report, with its audit. `lengths`: output hash -> length, for a
    cache whose judgments did not record them (`response_lengths`); `labels`: human labels, of which
    those naming this cache's baseline generator are scored."""
    cache = read_cache(path)
    chosen, judges = judgments_from_records(cache.records, judge)
    if not chosen:
        raise LimaError(f"{path}: no pairwise judgments" + (f" by {judge}" if judge else ""))
    check_one_judge(path, judges)
    judged = [r for r in cache.records if r.get("kind") == "pairwise" and r.get("judge") in judges]
    _check_one_pair(path, judged)
    ours_generator, baseline_generator = (str(judged[-1].get(f"{side}_generator")) for side in ("ours", "baseline"))
    if not name:  # default: the baseline's generator as recorded, else the file name
        name = judged[-1].get("baseline_generator") or Path(path).stem
    labels_by_outcome = {pid: combine(dict(orders))[0] for pid, orders in chosen.items()}
    d = stats.distribution(name, labels_by_outcome, OUTCOMES, judges, samples, seed)
    d.audit = pair_audit(chosen, ours_generator, baseline_generator, judges, lengths or {}, labels, samples, seed)
    return d
