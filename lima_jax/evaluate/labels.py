"""Human labels of pairwise outcomes, which the report scores the judge against (the file's format is
in the README's evaluation section): JSONL, `{"id" (or "prompt": [turns]), "baseline", "label":
win|tie|loss}` a line, optionally `ours` and `annotator`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from lima_jax.data.records import BadLine, json_object, read_jsonl
from lima_jax.errors import LimaError
from lima_jax.evaluate.answers.records import prompt_id
from lima_jax.evaluate.protocols.results import OUTCOME_SCORE


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
