"""An ablation grid: the file that defines it, its arms, and each arm's training data drawn with provenance.

A grid file (`configs/ablations/NAME.py`) returns a ConfigDict: the base config every arm trains, the
arms' data and sizes, the test prompts, the sampling, the checkpoint choice and the judge; every key
can be overridden with `--grid.KEY=VALUE`. An arm's data is one seeded permutation of its source file
(dev set last, training set first), so arms drawing from one file share their dev set and the quantity
arms are nested. The keys and the draw's files are described in docs/ablation.md."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Mapping

import ml_collections
import numpy as np

from lima_jax.config import config_dirs, flatten, load_config, set_key, validate
from lima_jax.data.records import json_object, parse_record
from lima_jax.errors import LimaError, namer
from lima_jax.storage.paths import Path, user_path, write_atomically

DRAW_FILE = "draw.json"
CHOICES = ("last", "epoch", "dev_loss", "likert")


def resolve_grid_path(spec: str, names: Mapping[str, str] | None = None) -> str:
    """`quality` -> configs/ablations/quality.py; a path (with an optional `:arg`) is kept. An error names
    the grid as `errors.namer(names)` does."""
    name, sep, arg = spec.partition(":")
    if name.endswith(".py") or "/" in name:
        if not Path(name).is_file():
            raise LimaError(f"{namer(names)('grid')}: no such grid file {name}")
        return spec
    for d in config_dirs():
        if (d / "ablations" / f"{name}.py").is_file():
            return str(d / "ablations" / f"{name}.py") + sep + arg
    raise LimaError(f"{namer(names)('grid')}: unknown grid {name!r} (configs/ablations/{name}.py)")


def load_grid(spec: str, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Loads a grid by name or path and applies dotted-key overrides (for tests and scripts)."""
    from ml_collections.config_flags import config_flags as _cf

    grid = _cf.ConfigFileFlagParser(name="grid").parse(resolve_grid_path(spec))
    for key, value in (overrides or {}).items():
        set_key(grid, key, value)
    return grid


@dataclasses.dataclass(frozen=True)
class Choice:
    """How an arm's checkpoint is chosen: `kind` in CHOICES, with an epoch or an epoch range."""

    kind: str
    lo: int = 0
    hi: int = 10**9

    @classmethod
    def parse(cls, spec: str) -> Choice:
        kind, _, arg = spec.partition(":")
        if kind not in CHOICES:
            raise LimaError(f"grid key checkpoint={spec!r}: expected one of last, epoch:N, dev_loss[:LO-HI], likert[:LO-HI]")
        if kind == "last":
            return cls(kind)
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", arg)
        if kind == "epoch" and (not match or match.group(2)):
            raise LimaError(f"grid key checkpoint={spec!r}: epoch needs one epoch number, e.g. epoch:10")
        if arg and not match:
            raise LimaError(f"grid key checkpoint={spec!r}: expected an epoch range such as {kind}:5-10")
        if not arg:
            return cls(kind)
        lo = int(match.group(1))
        return cls(kind, lo, int(match.group(2) or lo))


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: a training run on its own data, under `<grid workdir>/<name>`."""

    name: str
    data: str  # the source JSONL (or a folder holding train.jsonl)
    size: int  # examples trained on; 0: all but the dev set
    dir: Path

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"


def arms(grid: ml_collections.ConfigDict) -> list[Arm]:
    """The grid's arms, checked, in report order."""
    if not grid.get("arms"):
        raise LimaError(f"grid {grid.get('name', '?')}: no arms (grid key arms.NAME = {{data, size}})")
    workdir = workdir_of(grid)
    found = []
    for name in sorted(grid.arms.keys()):
        spec = grid.arms[name]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise LimaError(f"grid key arms.{name}: an arm name is a folder name (letters, digits, _ . -)")
        if not spec.get("data"):
            raise LimaError(f"grid key arms.{name}.data: empty; give the arm's data (--grid.arms.{name}.data=FILE.jsonl)")
        if int(spec.get("size", 0)) < 0:
            raise LimaError(f"grid key arms.{name}.size: must be 0 (all) or more, got {spec.size}")
        found.append(Arm(name, spec.data, int(spec.get("size", 0)), workdir / name))
    return found


def workdir_of(grid: ml_collections.ConfigDict) -> Path:
    if not grid.get("workdir"):
        raise LimaError("grid key workdir: empty; where the ablation's runs go (--grid.workdir=DIR)")
    return user_path(grid.workdir)


def train_config(grid: ml_collections.ConfigDict, arm: Arm) -> ml_collections.ConfigDict:
    """The arm's training config: the grid's `train` (its base config with the grid's overrides) with the
    arm's data and workdir."""
    config = load_config(grid.base)
    base = flatten(config.to_dict())
    overrides = {k: v for k, v in flatten(grid.train.to_dict()).items() if base.get(k, object()) != v}
    for key in ("workdir", "data.manual_dir", "data.dev_file"):
        if key in overrides:
            raise LimaError(f"grid key train.{key}: set by ablate for each arm; leave it as the base config has it")
    overrides.update({"workdir": str(arm.run_dir), "data.manual_dir": str(arm.data_dir)})
    for key, value in overrides.items():
        set_key(config, key, value)
    validate(config)
    return config


def _deep_update(tree: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _deep_update(tree[key], value)
        else:
            tree[key] = value
    return tree


def _source_file(arm: Arm) -> Path:
    path = user_path(arm.data)
    if path.is_dir():
        path = path / "train.jsonl"
    if not path.is_file():
        raise LimaError(f"grid key arms.{arm.name}.data: {path}: no such file")
    return path


def _example_id(text: str) -> str | None:
    meta = json_object(text).get("meta")
    if isinstance(meta, dict):
        for key in ("url", "id"):
            if isinstance(meta.get(key), (str, int)):
                return str(meta[key])
    return None


def draw_indices(n: int, size: int, dev_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Line indices (0-based, sorted) of the training and dev examples: one seeded permutation, the dev
    set at its end and the training set at its start, so draws of different sizes are nested."""
    order = np.random.default_rng(seed).permutation(n)
    train = order[: size or n - dev_size]
    dev = order[n - dev_size :] if dev_size else order[:0]
    return np.sort(train), np.sort(dev)


def prepare_data(arm: Arm, dev_size: int, seed: int) -> dict[str, Any]:
    """Writes the arm's drawn train.jsonl / dev.jsonl and draw.json (once: a rerun checks that the
    source, size, dev size and seed are unchanged and keeps them); returns draw.json's summary."""
    source = _source_file(arm)
    blob = source.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    key = {"source": str(source), "sha256": digest, "size": arm.size, "dev_size": dev_size, "seed": seed}
    record = arm.data_dir / DRAW_FILE
    if record.exists():
        kept = json.loads(record.read_text(encoding="utf-8"))
        changed = [k for k in ("sha256", "size", "dev_size", "seed") if kept.get(k) != key[k]]
        if changed:
            raise LimaError(f"{record}: arm {arm.name} was drawn with other {', '.join(changed)} "
                            f"({', '.join(f'{k}={kept.get(k)!r}' for k in changed)}); use another grid workdir "
                            "or delete the arm's folder to redo it")
        return _summary(kept)
    lines = [line for line in blob.decode("utf-8").splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):  # every line, so a bad one is named before hours of training
        try:
            parse_record(line)
        except Exception as e:  # BadLine, with what is wrong
            raise LimaError(f"{source}:{number}: {e}") from None
    if (arm.size or 1) + dev_size > len(lines):
        raise LimaError(f"grid key arms.{arm.name}: {source} has {len(lines)} examples; the arm needs "
                        f"{arm.size or 1} to train on + {dev_size} for the dev set")
    train, dev = draw_indices(len(lines), arm.size, dev_size, seed)
    arm.data_dir.mkdir(parents=True, exist_ok=True)
    for name, picked in (("train.jsonl", train), ("dev.jsonl", dev)):
        if len(picked):
            write_atomically(arm.data_dir / name, "".join(lines[i] + "\n" for i in picked))
    drawn = {"train": [{"line": int(i) + 1, "id": _example_id(lines[i])} for i in train],
             "dev": [{"line": int(i) + 1, "id": _example_id(lines[i])} for i in dev]}
    full = {**key, "source_examples": len(lines), "train_examples": len(train), "dev_examples": len(dev), **drawn}
    write_atomically(record, json.dumps(full, ensure_ascii=False, indent=1) + "\n")
    return _summary(full)


def _summary(draw: dict[str, Any]) -> dict[str, Any]:
    return {k: draw[k] for k in ("source", "sha256", "seed", "source_examples", "train_examples", "dev_examples")}


def grid_config(name: str, base: str, arms: dict[str, dict[str, Any]], *, train: dict[str, Any] | None = None,
                workdir: str, test_prompts: str = "", num_test_prompts: int = 0, samples_per_prompt: int = 5,
                checkpoint: str = "likert:5-10", judge: dict[str, Any] | None = None, seed: int = 0,
                max_new_tokens: int = 2048, generation_batch_size: int = 8,
                required: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """A grid file's ConfigDict with the paper's defaults (§5: 5 samples per prompt, LIMA's sampling, the
    Likert judge); `required` names keys that must be set (non-empty) before anything runs."""
    judged = {"checkpoint": "", "url": "", "model": "", "api_key_env": "OPENAI_API_KEY", "workers": 4,
              "max_retries": 5, "timeout_s": 120.0, "max_failures": 20, **(judge or {})}
    # `train` is the whole base config with the grid's changes, so that any of its keys can be overridden
    # on the command line (--grid.train.mesh.fsdp=8) with its type checked.
    full = _deep_update(load_config(base).to_dict(), train or {})
    return ml_collections.ConfigDict({
        "name": name, "base": base, "train": full, "workdir": workdir, "seed": seed,
        "test_prompts": test_prompts, "num_test_prompts": num_test_prompts, "samples_per_prompt": samples_per_prompt,
        "checkpoint": checkpoint, "generation_batch_size": generation_batch_size,
        "sampling": {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2, "max_new_tokens": max_new_tokens},
        "judge": judged, "arms": arms, "required": ",".join(required)})


def check_required(grid: ml_collections.ConfigDict) -> None:
    """Each key the grid file marks as required (e.g. the 7B weights, LIMA's test prompts) is set."""
    for dotted in filter(None, grid.get("required", "").split(",")):
        node: Any = grid
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not node:
            raise LimaError(f"grid key {dotted}: empty; set it with --grid.{dotted}=...")


def paper_grid(name: str, arms: dict[str, dict[str, Any]]) -> ml_collections.ConfigDict:
    """One of LIMA's §5 grids: the `7b` config (the recipe with batch 64 and dropout 0.2, 15 epochs) from
    pretrained LLaMA-7B weights, LIMA's test prompts, 5 samples each, rated by gpt-3.5-turbo, the
    checkpoint chosen by the dev answers' Likert score among epochs 5-10 (the paper chose by hand there)."""
    return grid_config(name, "7b", arms, train={"init_checkpoint": "", "data": {"tokenizer": ""}},
                       workdir=f"runs/ablations/{name}", judge={"url": "https://api.openai.com/v1",
                                                               "model": "gpt-3.5-turbo"},
                       required=("train.init_checkpoint", "test_prompts"))
