"""What the sources share after their own rules: test-set overlap, exact duplicates, and sampling.

Sampling across strata (Stack Exchange exchanges, wikiHow categories) follows LIMA §2.1's
"temperature τ = 3": each draw picks a stratum with probability p ∝ n^(1/τ), n being how many
candidates the stratum had, renormalised over the strata that still have some; it then takes that
stratum's next candidate in the stratum's own order (Stack Exchange: the highest-scoring question
first). τ = 1 samples in proportion to size, τ = ∞ uniformly over strata (wikiHow's "a category
first, then an article"). With groups (Stack Exchange's STEM and other), the examples are split evenly
between the groups, and what one group lacks is taken from the others.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from typing import Any, Iterable

from lima_jax.curate import text
from lima_jax.curate.report import Report
from lima_jax.data.records import read_conversations

EXCLUDE_N = 8  # word n-gram size of the test-overlap rule (shorter prompts must match whole)


@dataclasses.dataclass
class Candidate:
    """One example that passed its source's rules. `rank` orders a stratum (higher first)."""

    prompt: str
    response: str | None  # None: a prompt-only (test) record
    source: str  # the record's `source`, e.g. "stackexchange"
    stratum: str  # the exchange, category or subreddit the report counts it under
    rank: tuple  # compared as a whole: e.g. (question score, -question id)
    meta: dict[str, Any]
    group: str = ""
    follow_ups: tuple[str, ...] = ()  # a dialogue's later turns: user, assistant, user, assistant, ...

    def record(self) -> dict[str, Any]:
        turns = [self.prompt] if self.response is None else [self.prompt, self.response, *self.follow_ups]
        return {"conversations": turns, "source": self.source, "meta": self.meta}


def unit_interval(seed: int, *key: object) -> float:
    """A number in [0, 1) fixed by the seed and the key: a per-example coin that does not depend on
    the order examples are read in (so adding a site does not change the others' prompts)."""
    digest = hashlib.sha256(":".join(map(str, (seed, *key))).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def exclusion_grams(paths: Iterable[str], n: int = EXCLUDE_N) -> set[tuple[str, ...]]:
    """The word n-grams of every user turn of the test sets (LIMA-format or OpenAI JSONL)."""
    grams: set[tuple[str, ...]] = set()
    for path in paths:
        records, _ = read_conversations(path)
        for record in records:
            for turn in record["conversations"][0::2]:
                grams |= text.ngrams(turn, n)
    return grams


def drop_overlap_and_duplicates(
    candidates: list[Candidate], report: Report, exclude: set[tuple[str, ...]], n: int = EXCLUDE_N
) -> list[Candidate]:
    """Removes candidates whose prompt shares a word n-gram with a test prompt ("test_overlap") and
    candidates whose prompt is an exact duplicate of a better-ranked one's ("duplicate")."""
    kept, seen = [], set()
    for c in sorted(candidates, key=lambda c: (c.rank, c.stratum), reverse=True):
        if exclude and text.ngrams(c.prompt, n) & exclude:
            report.drop(c.stratum, "test_overlap")
            continue
        key = text.prompt_key(c.prompt)
        if key in seen:
            report.drop(c.stratum, "duplicate")
            continue
        seen.add(key)
        kept.append(c)
    return kept


def temperature_sample(strata: dict[str, list[Candidate]], n: int, temperature: float, rng: random.Random) -> list[Candidate]:
    """`n` candidates drawn across strata with p ∝ size^(1/temperature) (see the module's text)."""
    sizes = {k: len(v) for k, v in sorted(strata.items()) if v}
    weight = {k: 1.0 if math.isinf(temperature) else size ** (1.0 / temperature) for k, size in sizes.items()}
    taken = dict.fromkeys(sizes, 0)
    out: list[Candidate] = []
    while len(out) < n:
        open_ = [k for k in sizes if taken[k] < sizes[k]]
        if not open_:
            break
        k = rng.choices(open_, weights=[weight[s] for s in open_])[0]
        out.append(strata[k][taken[k]])
        taken[k] += 1
    return out


def sample(candidates: list[Candidate], n: int | None, temperature: float, seed: int, report: Report) -> list[Candidate]:
    """All candidates (n None), or n of them split evenly over the groups and drawn by temperature
    within each; candidates not drawn are counted as "not_sampled". Order: group, then as drawn."""
    groups: dict[str, dict[str, list[Candidate]]] = {}
    for c in candidates:  # already best-first within each stratum
        groups.setdefault(c.group, {}).setdefault(c.stratum, []).append(c)
    if n is None:
        chosen = [c for g in sorted(groups) for s in sorted(groups[g]) for c in groups[g][s]]
    else:
        available = {g: sum(map(len, strata.values())) for g, strata in groups.items()}
        quota = {g: n // len(groups) + (i < n % len(groups)) for i, g in enumerate(sorted(groups))} if groups else {}
        quota = {g: min(q, available[g]) for g, q in quota.items()}
        short = n - sum(quota.values())
        for g in sorted(groups):  # what one group lacks, the others give
            extra = min(short, available[g] - quota[g])
            quota[g] += extra
            short -= extra
        rng = random.Random(seed)
        chosen = [c for g in sorted(groups) for c in temperature_sample(groups[g], quota[g], temperature, rng)]
    picked = {id(c) for c in chosen}
    for c in candidates:
        if id(c) not in picked:
            report.drop(c.stratum, "not_sampled")
    for c in chosen:
        report.keep(c.stratum)
    return chosen
