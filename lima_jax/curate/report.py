"""How many candidates each rule removed, per stratum (exchange, category, subreddit): printed, and
written next to the output as `<output>.report.json` so a dataset carries its own account."""
from __future__ import annotations

import collections
import json
from typing import Any


class Report:
    """Counts per stratum: `candidates` seen, one count per rule that removed some, `written`.

    `rules` names every rule of the run in the order they apply (each candidate is counted under the
    first rule it fails), with what it means; the report lists them all, zeros included, so a reader
    sees which rules ran.
    """

    def __init__(self, source: str, rules: dict[str, str], settings: dict[str, Any]):
        self.source = source
        self.rules = dict(rules)
        self.settings = settings
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.skipped_inputs: list[str] = []  # inputs left out whole (e.g. exchanges of the "dropped" group)

    def seen(self, stratum: str, n: int = 1) -> None:
        self.counts[stratum]["candidates"] += n

    def drop(self, stratum: str, rule: str) -> None:
        if rule not in self.rules:
            raise KeyError(f"rule {rule!r} is not one of this report's rules")
        self.counts[stratum][rule] += 1

    def keep(self, stratum: str) -> None:
        self.counts[stratum]["written"] += 1

    def columns(self) -> list[str]:
        return ["candidates", *self.rules, "written"]

    def totals(self) -> dict[str, int]:
        total: collections.Counter = collections.Counter()
        for c in self.counts.values():
            total.update(c)
        return {k: total[k] for k in self.columns()}

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "settings": self.settings,
            "rules": self.rules,
            "total": self.totals(),
            "per_stratum": {s: {k: c[k] for k in self.columns()} for s, c in sorted(self.counts.items())},
            "skipped_inputs": self.skipped_inputs,
        }

    def table(self) -> str:
        """A plain-text table: one row per stratum and a total, one column per rule."""
        cols = self.columns()
        rows = [[s, *(str(c[k]) for k in cols)] for s, c in sorted(self.counts.items())]
        rows.append(["total", *(str(v) for v in self.totals().values())])
        head = [self.source, *cols]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [fmt(head), *map(fmt, rows)]
        if self.skipped_inputs:
            lines.append(f"skipped: {', '.join(self.skipped_inputs)}")
        return "\n".join(lines)

    def dumps(self) -> str:
        return json.dumps(self.as_json(), indent=2, ensure_ascii=False) + "\n"
