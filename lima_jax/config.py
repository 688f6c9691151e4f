"""Configs: `--config=NAME` finds `configs/NAME.py`, absl `--config.a.b=value` overrides it.

A config file defines `get_config()` returning an `ml_collections.ConfigDict`; most build it with
`lima_jax.recipe.lima_config(...)`, which holds the paper's recipe as defaults. The dict is locked, so an
unknown key fails at parse time. A config is then made ready in two steps (`prepare`): `resolve` fills what
`--config=auto` reads from its checkpoint (the only step that reads the disk), and `validate` checks every
run-level value once, before any work starts (pure).
"""
from __future__ import annotations

import importlib.util
import math
import os
import pathlib
from typing import Any, Callable

import ml_collections
from ml_collections.config_flags import config_flags as _cf

from lima_jax.errors import LimaError
from lima_jax.log import say
from lima_jax.model import ModelConfig
from lima_jax.recipe import check_platform, from_checkpoint, needs_checkpoint
from lima_jax.recipe import lima_config  # noqa: F401 - config files written before recipe.py import it from here

_REPO_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def config_dirs() -> list[pathlib.Path]:
    """Where `--config=NAME` looks: the checkout's configs/, then the installed lima_jax.configs."""
    dirs = [_REPO_CONFIGS]
    try:
        import lima_jax.configs as installed

        dirs += [pathlib.Path(p) for p in installed.__path__]
    except ImportError:
        pass
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def available_configs() -> list[str]:
    return sorted({p.stem for d in config_dirs() for p in d.glob("*.py") if not p.stem.startswith("_")})


def resolve_config_path(spec: str) -> str:
    """`65b` or `65b:arg` or `path/to/file.py[:arg]` -> a file path (with the `:arg` kept)."""
    name, sep, arg = spec.partition(":")
    if name.endswith(".py") or os.sep in name:
        if not os.path.isfile(name):
            raise LimaError(f"--config: no such config file {name}")
        return spec
    for d in config_dirs():
        if (d / f"{name}.py").is_file():
            return str(d / f"{name}.py") + sep + arg
    raise LimaError(f"--config: unknown config {name!r}; available: {', '.join(available_configs())}")


class ConfigFileParser(_cf.ConfigFileFlagParser):
    """ml_collections' config-file parser, resolving a bare name against configs/ first (or as `resolve` does)."""

    def __init__(self, name: str, lock_config: bool = True, resolve: Callable[[str], str] = resolve_config_path):
        super().__init__(name=name, lock_config=lock_config)
        self._resolve = resolve

    def parse(self, path: str) -> ml_collections.ConfigDict:
        try:
            return super().parse(self._resolve(path))
        except LimaError as e:
            raise ValueError(str(e)) from None


def override_keys(argv: list[str], name: str = "config") -> list[str]:
    """The config keys a command line sets: `--config.a.b=value` -> `a.b`."""
    return [a[len(name) + 3 :].split("=", 1)[0] for a in argv if a.startswith(f"--{name}.")]


def load_config(spec: str, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Loads a config by name or path and applies dotted-key overrides (for tests and scripts)."""
    config = ConfigFileParser(name="config").parse(resolve_config_path(spec))
    for key, value in (overrides or {}).items():
        set_key(config, key, value)
    prepare(config)
    return config


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"data": {"max_len": 64}} -> {"data.max_len": 64}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def set_key(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Sets `a.b.c`; an unknown key or a value of the wrong type is a LimaError naming the key."""
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise LimaError(f"config key {dotted}: unknown key {part!r}")
        node = node[part]
    if leaf not in node:
        raise LimaError(f"config key {dotted}: unknown key")
    try:
        node[leaf] = value
    except TypeError as e:
        raise LimaError(f"config key {dotted}: {e}") from None


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The config's model as written: `model.vocab_size` is the base vocabulary (the tokenizer's pieces)."""
    values = config.model.to_dict()
    values.pop("vocab_multiple", None)  # how training pads the vocabulary, not the architecture
    return ModelConfig.from_dict(values)


PARAMS_DTYPES = ("", "float32", "bfloat16")  # what a step's `params` may be stored in ("": as trained)


def resolve(config: ml_collections.ConfigDict, platform: str | None = None) -> str | None:
    """Fills what `--config=auto` leaves unset from `init_checkpoint`, for `platform` (default: JAX's
    backend), in place: the only step that reads the disk. Returns the line saying what it chose, or
    None when the config names its model."""
    return from_checkpoint(config, platform) if needs_checkpoint(config) else None


def prepare(config: ml_collections.ConfigDict, platform: str | None = None) -> ml_collections.ConfigDict:
    """A parsed config made ready to run: `resolve`, say what it chose, `validate`."""
    chosen = resolve(config, platform)
    if chosen:
        say(f"--config=auto: {chosen}")
    validate(config, platform)
    return config


def validate(config: ml_collections.ConfigDict, platform: str | None = None) -> None:
    """Checks every run-level value the type system cannot, before any work starts: one LimaError line
    per problem. Pure: reads no file, prints nothing. `platform`: where the run trains, when known."""

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise LimaError(f"config key {key}: {why}")

    model_config(config).validate(seq_len=config.data.max_len if "data" in config else None)
    vocab_multiple = config.model.get("vocab_multiple", 1)
    need(vocab_multiple > 0, "model.vocab_multiple", f"must be positive, got {vocab_multiple}")
    if "optim" in config:
        _validate_optim(config.optim, need)
    if "checkpoint" in config:
        _validate_training(config, need)
    if "mesh" in config:
        from lima_jax.sharding import check_mesh

        check_mesh(config.mesh.to_dict())
    if platform is not None:
        check_platform(config, platform)


def _validate_training(config: ml_collections.ConfigDict, need: Callable[[bool, str, str], None]) -> None:
    """The run's length, batch, data and checkpoint keys."""
    for key in ("num_epochs", "batch_size", "grad_accum"):
        need(config[key] >= 1, key, f"must be positive, got {config[key]}")
    need(config.data.max_len >= 2, "data.max_len", f"must be at least 2, got {config.data.max_len}")
    from lima_jax.data.tokenizer import TRAIN_ON

    need(config.data.train_on in TRAIN_ON, "data.train_on", f"must be one of {', '.join(TRAIN_ON)}, got {config.data.train_on!r}")
    ckpt = config.checkpoint
    if ckpt.every_steps < 0 or ckpt.max_to_keep < 0:
        raise LimaError("config keys checkpoint.every_steps and checkpoint.max_to_keep must be >= 0")
    need(ckpt.params_dtype in PARAMS_DTYPES, "checkpoint.params_dtype",
         f"{ckpt.params_dtype!r} is not one of {', '.join(repr(d) if not d else d for d in PARAMS_DTYPES)}")
    if "log" in config:
        _validate_log(config.log, need)


def _validate_log(log: ml_collections.ConfigDict, need: Callable[[bool, str, str], None]) -> None:
    """The W&B names (W&B refuses a project or entity with / \\ # ? % :), and the package they need:
    missing, it is one line now, not an error after the data is prepared."""
    for key in ("wandb", "wandb_entity", "wandb_name"):
        value = log.get(key, "")
        need(isinstance(value, str), f"log.{key}", f"must be a string, got {value!r}")
        need(key == "wandb_name" or not any(c in value for c in "/\\#?%:"), f"log.{key}",
             f"a W&B name may not hold any of / \\ # ? % :, got {value!r}")
    if log.get("wandb"):
        need(importlib.util.find_spec("wandb") is not None, "log.wandb", "needs the wandb package: pip install wandb")


def _validate_optim(o: ml_collections.ConfigDict, need: Callable[[bool, str, str], None]) -> None:
    """AdamW's settings: a negative learning rate would train by gradient ascent, a NaN poison every step."""
    for key in ("lr", "end_lr"):
        need(math.isfinite(o[key]) and o[key] > 0, f"optim.{key}", f"must be finite and > 0, got {o[key]}")
    for key in ("b1", "b2"):
        need(0 <= o[key] < 1, f"optim.{key}", f"must be in [0, 1), got {o[key]}")
    need(math.isfinite(o.eps) and o.eps > 0, "optim.eps", f"must be finite and > 0, got {o.eps}")
    narrow = o.get("narrow_params", "master")
    need(narrow in ("master", "stochastic", "nearest"), "optim.narrow_params", f"must be master, stochastic or nearest, got {narrow!r}")
    moments = o.get("moments_dtype", "")
    need(moments in ("", "float32", "bfloat16"), "optim.moments_dtype", f"must be float32, bfloat16 or empty, got {moments!r}")
    for key in ("weight_decay", "grad_clip"):
        need(math.isfinite(o[key]) and o[key] >= 0, f"optim.{key}", f"must be finite and >= 0, got {o[key]}")
