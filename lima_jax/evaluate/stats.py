"""The statistics of the reports: percentile bootstraps over prompts (seeded, so that a report is
reproducible), the length-controlled win rate (AlpacaEval 2's regression, without its
instruction-difficulty term) and the judge's tie-discounted agreement with human labels (LIMA §4).
The README's evaluation section gives the methods and why they differ from AlpacaEval's.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lima_jax.evaluate.labels import HumanLabel
from lima_jax.evaluate.protocols.results import OUTCOME_SCORE

Interval = tuple[float, float]

LENGTH_UNIT = "characters"  # as AlpacaEval's `str.len()`, so the figures compare across tools
RIDGE = 0.01  # L2 penalty on the logistic coefficients: a N(0, 10^2) prior, negligible unless the data separate


def bootstrap_counts(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n): how often each of n items is drawn in each resample (with replacement). Every
    bootstrap here draws through it."""
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    counts = np.zeros((samples, n))
    np.add.at(counts, (np.arange(samples)[:, None], draws), 1.0)
    return counts


def percentiles(values: np.ndarray, level: float) -> Interval:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_intervals(labels: Sequence[str], categories: Sequence[str], samples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, Interval]:
    """Percentile-bootstrap intervals (in percent) of each category's share, resampling the labels
    (one per prompt) with replacement. Empty input gives NaN intervals."""
    if not labels:
        return {c: (math.nan, math.nan) for c in categories}
    index = {c: i for i, c in enumerate(categories)}
    onehot = np.zeros((len(labels), len(categories)))
    onehot[np.arange(len(labels)), [index[label] for label in labels]] = 1.0
    shares = 100.0 * (bootstrap_counts(len(labels), samples, seed) @ onehot / len(labels))
    return {c: percentiles(shares[:, i], level) for i, c in enumerate(categories)}


def ratio_interval(sums: np.ndarray, sizes: np.ndarray, samples: int, seed: int, level: float = 0.95,
                   scale: float = 1.0) -> Interval:
    """The interval of scale * sum / size over groups (a prompt with all its scores or labels), resampling
    the groups: the scores of one prompt move together."""
    counts = bootstrap_counts(len(sums), samples, seed)
    return percentiles(scale * (counts @ sums) / (counts @ sizes), level)


def mean_interval(scores_by_prompt: dict[str, list[int]], samples: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """The mean of all scores and a percentile-bootstrap interval that resamples prompts (each with
    all its scores); NaNs when there are none."""
    groups = [g for g in scores_by_prompt.values() if g]
    if not groups:
        return math.nan, math.nan, math.nan
    sums = np.array([sum(g) for g in groups], np.float64)
    sizes = np.array([len(g) for g in groups], np.float64)
    lo, hi = ratio_interval(sums, sizes, samples, seed, level)
    return float(sums.sum() / sizes.sum()), lo, hi


def rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)  # strict JSON: no NaN


@dataclasses.dataclass
class Distribution:
    """Counts over `categories` for one comparison (or the ratings), with intervals."""

    name: str
    categories: tuple[str, ...]
    counts: dict[str, int]
    intervals: dict[str, Interval]
    excluded: int  # prompts with a failed or missing judgment
    judges: list[str]
    audit: Any = None  # pairwise comparisons only: their `protocols.pairwise.PairAudit`

    @property
    def total(self) -> int:
        return sum(self.counts[c] for c in self.categories)

    def pct(self, category: str) -> float:
        return 100.0 * self.counts[category] / self.total if self.total else math.nan

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "judged": self.total, "excluded": self.excluded, "judges": self.judges,
               "counts": self.counts, "pct": {c: rounded(self.pct(c)) for c in self.categories},
               "ci95": {c: [rounded(v) for v in self.intervals[c]] for c in self.categories}}
        if self.audit is not None:
            out.update(self.audit.to_json())
        return out


def distribution(name: str, labels: dict[str, str], categories: tuple[str, ...], judges: set[str],
                 samples: int, seed: int) -> Distribution:
    """The labels (one per prompt) counted over `categories`; the others (failed, missing) are excluded."""
    kept = [labels[k] for k in labels if labels[k] in categories]
    return Distribution(name, categories, {c: kept.count(c) for c in categories},
                        bootstrap_intervals(kept, categories, samples, seed), len(labels) - len(kept), sorted(judges))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def logistic_fit(features: np.ndarray, target: np.ndarray, weights: np.ndarray, ridge: float = RIDGE,
                 iterations: int = 100) -> np.ndarray:
    """Penalized logistic regressions with soft targets, one per row of `weights`, by Newton's method.

    features (n, k), target (n,) in [0, 1], weights (b, n) per-observation weights (bootstrap counts);
    minimizes sum_i weights * cross_entropy(target, sigmoid(features @ coef)) + ridge/2 * |coef|^2 for
    each row; returns coef (b, k)."""
    features, target = np.asarray(features, np.float64), np.asarray(target, np.float64)
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    coef = np.zeros((weights.shape[0], features.shape[1]))
    penalty = ridge * np.eye(features.shape[1])
    for _ in range(iterations):
        p = _sigmoid(coef @ features.T)
        gradient = (weights * (target - p)) @ features - ridge * coef
        hessian = np.einsum("bn,ni,nj->bij", weights * p * (1 - p), features, features) + penalty
        step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        coef += step
        if np.abs(step).max() < 1e-9:
            break
    return coef


@dataclasses.dataclass
class LengthControlled:
    """The length-controlled win rate of one comparison (percentages)."""

    prompts: int
    win_rate: float  # ties counted half: the mean preference
    win_rate_ci: Interval
    lc_win_rate: float
    lc_ci: Interval
    intercept: float
    length_coef: float  # on tanh(standardized length difference); > 0: the judge prefers the longer answer

    def to_json(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "win_rate": round(self.win_rate, 2),
                "win_rate_ci95": [round(v, 2) for v in self.win_rate_ci], "lc_win_rate": round(self.lc_win_rate, 2),
                "lc_ci95": [round(v, 2) for v in self.lc_ci],
                "coef": {"intercept": round(self.intercept, 4), "tanh_std_delta_len": round(self.length_coef, 4)},
                "length_unit": LENGTH_UNIT, "method": "AlpacaEval 2 GLM without instruction difficulty, "
                f"L2 penalty {RIDGE}; preference = mean of both orders (win 1, tie 0.5, loss 0)"}


def length_features(ours_lengths: Sequence[float], baseline_lengths: Sequence[float]) -> np.ndarray:
    """tanh of the length difference over its standard deviation (AlpacaEval's `np.tanh(std_delta_len)`);
    all zeros when every difference is the same (nothing to standardize, nothing to control)."""
    delta = np.asarray(ours_lengths, np.float64) - np.asarray(baseline_lengths, np.float64)
    sd = delta.std(ddof=1) if len(delta) > 1 else 0.0
    return np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)


def length_controlled_win_rate(preference: Sequence[float], ours_lengths: Sequence[float],
                               baseline_lengths: Sequence[float], samples: int = 1000, seed: int = 0,
                               level: float = 0.95) -> LengthControlled:
    """The win rate (ties half) and the length-controlled win rate, with bootstrap intervals."""
    y = np.asarray(preference, np.float64)
    if not len(y):
        raise ValueError("no preferences")
    features = np.stack([np.ones_like(y), length_features(ours_lengths, baseline_lengths)], axis=1)
    coef = logistic_fit(features, y, np.ones((1, len(y))))[0]
    counts = bootstrap_counts(len(y), samples, seed)
    boot = logistic_fit(features, y, counts)
    return LengthControlled(len(y), 100 * float(y.mean()), percentiles(100 * counts @ y / len(y), level),
                            100 * float(_sigmoid(coef[0])), percentiles(100 * _sigmoid(boot[:, 0]), level),
                            float(coef[0]), float(coef[1]))


def tie_discounted(judge: str, human: str) -> float:
    """LIMA's agreement score for one example: 1 when both agree, 0.5 when exactly one says tie."""
    if judge == human:
        return 1.0
    return 0.5 if "tie" in (judge, human) else 0.0


@dataclasses.dataclass
class Agreement:
    """The judge's tie-discounted agreement with the human labels of one comparison (percentages)."""

    labels: int  # labels scored (their prompt has a judge's outcome)
    prompts: int
    agreement: float
    ci: Interval
    same: int  # labels where judge and human agree
    half: int  # labels where exactly one says tie
    unjudged: int  # labels whose prompt has no judge's outcome (failed, missing or never judged)

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "prompts": self.prompts,
                "agreement": round(self.agreement, 2) if self.labels else None,
                "ci95": [round(v, 2) for v in self.ci] if self.labels else None, "same": self.same,
                "one_tie": self.half, "unjudged": self.unjudged, "method": "tie-discounted accuracy (LIMA §4)"}


def judge_agreement(judge_outcomes: Mapping[str, str], labels: Iterable[HumanLabel], samples: int = 1000,
                    seed: int = 0, level: float = 0.95) -> Agreement:
    """Scores each label against the judge's outcome for its prompt; the interval resamples prompts
    (several annotators' labels of one prompt move together)."""
    per_prompt: dict[str, list[float]] = {}
    unjudged = 0
    for label in labels:
        outcome = judge_outcomes.get(label.prompt_id)
        if outcome not in OUTCOME_SCORE:
            unjudged += 1
            continue
        per_prompt.setdefault(label.prompt_id, []).append(tie_discounted(outcome, label.label))
    scores = [s for ss in per_prompt.values() for s in ss]
    if not scores:
        return Agreement(0, 0, math.nan, (math.nan, math.nan), 0, 0, unjudged)
    sums = np.array([sum(ss) for ss in per_prompt.values()])
    sizes = np.array([len(ss) for ss in per_prompt.values()], np.float64)
    return Agreement(len(scores), len(per_prompt), 100 * sum(scores) / len(scores),
                     ratio_interval(sums, sizes, samples, seed, level, scale=100),
                     scores.count(1.0), scores.count(0.5), unjudged)
