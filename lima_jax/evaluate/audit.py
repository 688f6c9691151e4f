r"""What makes a pairwise verdict auditable (the statistics behind `evaluate.report`): how often the
two orders agree, how long each side's answers are, the win rate with the judge's length preference
taken out, and the judge's agreement with human labels.

**Length-controlled win rate** (AlpacaEval 2, Dubois et al. 2024, arXiv 2404.04475; alpaca_eval's
`metrics/glm_winrate.py`). Per prompt, the preference y is the mean of the two orders' scores (win 1,
tie 0.5, loss 0), so y is in {0, .25, .5, .75, 1}; its mean is the win rate with ties counted half
(AlpacaEval's win rate). A logistic regression with soft labels (cross-entropy against y) fits

    logit P(ours preferred) = b + w * tanh(delta / sd(delta)),   delta = len(ours) - len(baseline)

with lengths in characters (AlpacaEval's `str.len()`) and sd the sample standard deviation of delta
over the prompts (not centred, as AlpacaEval). The length-controlled win rate is the predicted win
rate with the length term set to zero, averaged over prompts: sigmoid(b). With no length effect
(w = 0) it equals the win rate with ties half. Differences from AlpacaEval, and why:
- no instruction-difficulty term: AlpacaEval's per-instruction difficulty is fitted once over its
  leaderboard (hundreds of models on its 805 instructions); a report's few baselines on its own
  prompts cannot estimate it apart from the verdicts it is meant to explain;
- a weak L2 penalty (`RIDGE`, on both coefficients) instead of AlpacaEval's cross-validated L1
  penalty and its regularization towards "gamed" (verbose/concise) baseline outputs, which we do
  not have. The penalty keeps the fit finite when length alone separates the verdicts perfectly
  (a judge that always picks the longer answer); there the intercept is weakly identified and the
  figure moves towards 50% but depends on the prompts nearest equal length;
- both orders of every prompt enter (as the mean y), which already removes position bias.
The 95% interval is a percentile bootstrap over prompts, refitting on each resample (the
standardization uses all prompts).

**Agreement with human labels**, as LIMA measures it (§4, "tie-discounted accuracy"): 1 point when
the judge and the human give the same outcome, 0.5 when exactly one of them says tie, 0 otherwise,
averaged over labels. The judge's outcome is the report's per-prompt one (the two orders agreeing,
a tie when they disagree). The labels file, JSONL, one label per line:

    {"id": "9c1d...", "baseline": "alpaca-65b", "label": "win"}

`id` is the prompt id of the response files and judgment caches (`responses.prompt_id` of the turns
when the response files gave none); `"prompt": [turns]` may stand instead of `id`. `baseline` is the
baseline's generator as the response file (and the cache's `baseline_generator`) names it. `label`
is the outcome from our side, as the report's columns: "win", "tie" or "loss". Optional: `ours`
(our generator, checked against the cache) and `annotator` (several annotators may label a prompt;
each label counts, and the interval resamples prompts).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lima_jax.data.records import BadLine, json_object, read_jsonl
from lima_jax.errors import LimaError
from lima_jax.evaluate.responses import prompt_id

Interval = tuple[float, float]

OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}  # from our side
LENGTH_UNIT = "characters"  # as AlpacaEval's `str.len()`, so the figures compare across tools
RIDGE = 0.01  # L2 penalty on the logistic coefficients: a N(0, 10^2) prior, negligible unless the data separate


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


def _bootstrap_counts(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n): how often each of n items is drawn in each resample (with replacement)."""
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    counts = np.zeros((samples, n))
    np.add.at(counts, (np.arange(samples)[:, None], draws), 1.0)
    return counts


def _percentiles(values: np.ndarray, level: float) -> Interval:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


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
    counts = _bootstrap_counts(len(y), samples, seed)
    boot = logistic_fit(features, y, counts)
    return LengthControlled(len(y), 100 * float(y.mean()), _percentiles(100 * counts @ y / len(y), level),
                            100 * float(_sigmoid(coef[0])), _percentiles(100 * _sigmoid(boot[:, 0]), level),
                            float(coef[0]), float(coef[1]))


def tie_discounted(judge: str, human: str) -> float:
    """LIMA's agreement score for one example: 1 when both agree, 0.5 when exactly one says tie."""
    if judge == human:
        return 1.0
    return 0.5 if "tie" in (judge, human) else 0.0


@dataclasses.dataclass(frozen=True)
class HumanLabel:
    prompt_id: str
    baseline: str
    label: str
    ours: str | None = None
    annotator: str | None = None
    where: str = ""  # file:line, for messages


def _parse_label(text: str) -> dict[str, Any]:
    obj = json_object(text)
    if "id" in obj:
        if not isinstance(obj["id"], str) or not obj["id"]:
            raise BadLine("'id' must be a non-empty string")
        pid = obj["id"]
    elif "prompt" in obj:
        turns = [obj["prompt"]] if isinstance(obj["prompt"], str) else obj["prompt"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise BadLine("'prompt' must be a non-empty list of strings (the turns)")
        pid = prompt_id(turns)
    else:
        raise BadLine("missing 'id' (the prompt id, as in the response files) or 'prompt'")
    if not isinstance(obj.get("baseline"), str) or not obj["baseline"]:
        raise BadLine("missing 'baseline' (the baseline's generator, as its response file names it)")
    if obj.get("label") not in OUTCOME_SCORE:
        raise BadLine(f"'label' must be one of {', '.join(map(repr, OUTCOME_SCORE))} (from our side), "
                      f"not {obj.get('label')!r}")
    for field in ("ours", "annotator"):
        if obj.get(field) is not None and not isinstance(obj[field], str):
            raise BadLine(f"{field!r} must be a string")
    return {"prompt_id": pid, "baseline": obj["baseline"], "label": obj["label"], "ours": obj.get("ours"),
            "annotator": obj.get("annotator")}


def read_human_labels(path: str) -> list[HumanLabel]:
    """The labels in a JSONL file (the format above); a bad or repeated line raises `file:line: why`."""
    parsed, _ = read_jsonl(path, _parse_label)
    labels: list[HumanLabel] = []
    seen: dict[tuple, int] = {}
    for lineno, fields in parsed:
        key = (fields["prompt_id"], fields["baseline"], fields["annotator"])
        if key in seen:
            raise LimaError(f"{path}:{lineno}: prompt {key[0]!r} vs {key[1]!r} is already labelled on line "
                            f"{seen[key]}" + (" by the same annotator" if key[2] else " (give each an 'annotator')"))
        seen[key] = lineno
        labels.append(HumanLabel(**fields, where=f"{path}:{lineno}"))
    if not labels:
        raise LimaError(f"{path}: no labels")
    return labels


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
    counts = _bootstrap_counts(len(sums), samples, seed)
    boot = 100 * (counts @ sums) / (counts @ sizes)
    return Agreement(len(scores), len(per_prompt), 100 * sum(scores) / len(scores), _percentiles(boot, level),
                     scores.count(1.0), scores.count(0.5), unjudged)
