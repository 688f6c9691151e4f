"""Configs: `--config=NAME` finds `configs/NAME.py`, absl `--config.a.b=value` overrides it.

A config file defines `get_config()` returning an `ml_collections.ConfigDict`; most build it with
`lima_config(...)` below, which holds the paper's recipe as defaults. The dict is locked, so an
unknown key fails at parse time, and `validate()` checks values once before any work starts.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any

import ml_collections
from absl import flags
from ml_collections.config_flags import config_flags as _cf

from lima_jax.errors import LimaError
from lima_jax.model import DTYPES, REMAT_POLICIES, ModelConfig

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


class _NamedConfigParser(_cf.ConfigFileFlagParser):
    """ml_collections' config-file parser, resolving a bare name against configs/ first."""

    def parse(self, path: str) -> ml_collections.ConfigDict:
        try:
            return super().parse(resolve_config_path(path))
        except LimaError as e:
            raise ValueError(str(e)) from None


def define_config_flag(name: str = "config", default: str | None = None, help_string: str = "") -> flags.FlagHolder:
    """Like `config_flags.DEFINE_config_file`, but `--config=65b` picks configs/65b.py by name.

    Each entry point defines it; a process that imports several (tests) shares the first.
    """
    if name in flags.FLAGS:
        return flags.FlagHolder(flags.FLAGS, flags.FLAGS[name])
    flag = _cf._ConfigFlag(  # noqa: SLF001 - the public helper hard-wires its parser
        parser=_NamedConfigParser(name=name, lock_config=True),
        serializer=flags.ArgumentSerializer(),
        name=name,
        default=default,
        help_string=help_string or f"a config name ({', '.join(available_configs())}) or a .py file; override keys with --{name}.a.b=value",
        flag_values=flags.FLAGS,
        accept_new_attributes=False,
    )
    return flags.DEFINE_flag(flag, flags.FLAGS)


def check_overrides(argv: list[str], name: str = "config") -> None:
    """Checks every `--NAME.a.b=value` against the keys of the config that `--NAME` loads, so an
    unknown key is named in one line (ml_collections raises a multi-line AttributeError)."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)
    keys = [a[len(name) + 3 :].split("=", 1)[0] for a in argv if a.startswith(f"--{name}.")]
    if not keys:
        return
    if spec is None:
        raise LimaError(f"--{name}.{keys[0]} overrides a key, but no --{name}=NAME was given")
    config = _NamedConfigParser(name=name).parse(spec)
    for dotted in keys:
        node = config
        for i, part in enumerate(dotted.split(".")):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(dotted.split(".")[:i]) or "the top level"
                choices = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
                raise LimaError(f"--{name}.{dotted}: unknown config key {part!r} in {where} (known: {choices})")
            node = node[part]


def load_config(spec: str, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Loads a config by name or path and applies dotted-key overrides (for tests and scripts)."""
    config = _NamedConfigParser(name="config").parse(resolve_config_path(spec))
    for key, value in (overrides or {}).items():
        set_key(config, key, value)
    validate(config)
    return config


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
    return ModelConfig.from_dict(config.model.to_dict())


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the values that the type system cannot: one LimaError line per problem."""
    m = config.model

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise LimaError(f"config key {key}: {why}")

    for key in ("dim", "num_layers", "num_heads", "num_kv_heads", "ffn_dim", "vocab_size", "max_len"):
        need(m[key] > 0, f"model.{key}", f"must be positive, got {m[key]}")
    need(m.head_dim >= 0, "model.head_dim", f"must be >= 0 (0 means dim / num_heads), got {m.head_dim}")
    need(m.head_dim > 0 or m.dim % m.num_heads == 0, "model.dim", f"{m.dim} is not divisible by model.num_heads={m.num_heads}")
    need(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads", f"{m.num_kv_heads} does not divide model.num_heads={m.num_heads}")
    need((m.head_dim or m.dim // m.num_heads) % 2 == 0, "model.head_dim", "rotary embeddings need an even head dim")
    need(0.0 <= m.residual_dropout < 1.0, "model.residual_dropout", f"must be in [0, 1), got {m.residual_dropout}")
    need(m.remat in REMAT_POLICIES, "model.remat", f"must be one of {', '.join(REMAT_POLICIES)}, got {m.remat!r}")
    for key in ("dtype", "param_dtype"):
        need(m[key] in DTYPES, f"model.{key}", f"must be one of {', '.join(DTYPES)}, got {m[key]!r}")
    need(m.rope_theta > 0, "model.rope_theta", f"must be positive, got {m.rope_theta}")
    need(m.norm_eps > 0, "model.norm_eps", f"must be positive, got {m.norm_eps}")


def lima_config(name: str, *, batch_size: int = 64, **model: Any) -> ml_collections.ConfigDict:
    """A config named `name` with LIMA's recipe as defaults, for the model dimensions given.

    The model keys are ModelConfig's fields (model.dim, model.num_layers, ...). The recipe: 15
    epochs; AdamW with b1 0.9, b2 0.95, weight decay 0.1; learning rate 1e-5 decaying linearly to
    1e-6, no warmup; 32 examples per batch for 65B, 64 for smaller models; 2048-token texts; residual
    dropout rising to 0.3 at the top layer for 65B and 0.2 for smaller models. Loss on assistant turns
    and their end-of-turn tokens (the paper does not say; `data.train_on=all` trains on every token).
    """
    unknown = set(model) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise LimaError(f"lima_config: unknown model key(s) {sorted(unknown)}")
    c = ml_collections.ConfigDict()
    c.name = name
    c.model = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig(**model)))
    c.workdir = f"runs/{name}"  # a run restarted with the same workdir resumes from its latest step
    c.init_checkpoint = ""  # a converted pretrained checkpoint; empty trains from a random init
    c.seed = 0
    c.num_epochs = 15
    c.batch_size = batch_size  # examples per step, across all hosts
    c.grad_accum = 1  # micro-batches per step, when a batch does not fit in memory at once

    c.data = ml_collections.ConfigDict()
    c.data.manual_dir = ""  # LIMA's train.jsonl/test.jsonl (or your own); empty uses the embedded demo
    c.data.tokenizer = ""  # a LLaMA sentencepiece tokenizer.model; empty: the init checkpoint's, or the demo's
    c.data.train_on = "assistant"  # assistant | all
    c.data.skip_invalid = False
    c.data.max_len = 2048  # longer texts are trimmed; also the packed row length
    c.data.pack = True
    c.data.dev_file = ""  # a dev set file; empty holds out data.dev_size training examples
    c.data.dev_size = 50

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-5
    c.optim.end_lr = 1e-6
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1
    c.optim.grad_clip = 0.0  # 0 turns clipping off

    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})  # -1 takes the rest

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 0  # besides every epoch end; 0 turns it off
    c.checkpoint.max_to_keep = 0  # 0 keeps all (the paper picks among epochs 5-10)
    c.checkpoint.async_save = True

    c.log_every = 1
    c.peak_tflops = 0.0  # per device, for MFU; 0 looks it up by device kind (measured on CPU)
    return c


def describe_flag_error(message: str) -> str:
    """absl's multi-line flag-parsing errors, shortened to the line that names the problem."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"(config|key|field|type|override|flag)", line, re.I):
            return line
    return lines[-1] if lines else str(message)
