"""The lima_jax checkpoint (Orbax): a model's parameters plus the architecture that reads them.

A checkpoint directory holds three Orbax items, `params` (the parameter tree), `model` (the
ModelConfig as JSON) and `checksums` (each array's, checked when it is read: `weights/checksums.py`;
absent from a checkpoint saved before them), plus the tokenizer's files when one is known
(`tokenizer.model`, or `tokenizer.json` with its `tokenizer_config.json`). A converted checkpoint and
each step a training run saves under `<workdir>/checkpoints/<step>/` have this same layout (a step adds
`run`, and the latest step alone what a resume needs: `train.checkpoints`), so
everything that reads weights takes any of: a converted checkpoint, one step, or a run's workdir (its latest
complete step; Orbax writes a step under a temporary name and renames it when complete, or on
Cloud Storage marks it with a commit file). Every path may be local or `gs://`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from lima_jax.data import text_tokenizers
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig, abstract_model
from lima_jax.storage.paths import Path, user_path
from lima_jax.weights import checksums

PARAMS = "params"
MODEL = "model"
CHECKSUMS = "checksums"
TOKENIZER = "tokenizer.model"
STEPS_DIR = "checkpoints"


def model_record(cfg: ModelConfig) -> dict[str, Any]:
    """The `model` item: the architecture as JSON, tagged with the format that wrote it."""
    return {"format": "lima_jax", "config": dataclasses.asdict(cfg)}


def root_cause(error: BaseException) -> str:
    """The first line of the innermost error: TensorStore's own ("Error reading ... byte range"),
    not Orbax's wrapper with a spec dump."""
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def saved_checksums(step: Path) -> dict[str, checksums.Record] | None:
    """The checksums saved with a checkpoint or step, per item; None for one saved before them."""
    return _json_item(step / CHECKSUMS) if (step / CHECKSUMS).is_dir() else None


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save(
    path: str | os.PathLike,
    params: dict,
    cfg: ModelConfig,
    *,
    tokenizer: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes params (kept in their own dtype) and cfg to `path`; an existing `path` only with `overwrite`,
    and then without deleting anything (`weights/output.py` clears a previous export's own files)."""
    path = user_path(path)  # Orbax wants absolute paths
    if path.exists() and not overwrite:
        raise LimaError(f"{path} already exists; choose a new output path (or pass --overwrite)")
    with _checkpointer() as ckptr:
        ckptr.save(path, ocp.args.Composite(params=ocp.args.StandardSave(params), model=ocp.args.JsonSave(model_record(cfg)),
                                            checksums=ocp.args.JsonSave({PARAMS: checksums.of(params)})))
    if tokenizer is not None:
        text_tokenizers.copy_files(tokenizer, path)
    return path


def is_checkpoint(path: Path) -> bool:
    return (path / PARAMS).is_dir() and (path / MODEL).is_dir()


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint directory from a checkpoint, a step directory, or a run's workdir (latest step)."""
    path = user_path(path)  # Orbax wants absolute paths
    if not path.exists():
        raise LimaError(f"checkpoint {path}: no such file or directory")
    if is_checkpoint(path):
        return path
    for steps_dir in (path / STEPS_DIR, path):
        if steps_dir.is_dir():
            steps = [
                int(p.name)
                for p in steps_dir.iterdir()
                if p.name.isdigit() and is_checkpoint(p) and ocp.step.is_checkpoint_finalized(p)
            ]
            if steps:
                return steps_dir / str(max(steps))
    if (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists():
        raise LimaError(f"checkpoint {path}: a Hugging Face folder; convert it first: python -m lima_jax.convert --input={path} --output=CKPT")
    raise LimaError(f"checkpoint {path}: not a checkpoint, a step directory or a workdir with complete steps")


def load_model_config(path: str | os.PathLike) -> ModelConfig:
    path = resolve(path)
    model_json = _json_item(path / MODEL)
    if not isinstance(model_json, dict) or "config" not in model_json:
        raise LimaError(f"checkpoint {path}: {MODEL}/ holds no model config")
    return ModelConfig.from_dict(model_json["config"])


def stored_dtypes(path: str | os.PathLike) -> dict:
    """The parameter tree of the checkpoint with each leaf's stored dtype (e.g. bf16 from a hub)."""
    tree = ocp.StandardCheckpointHandler().metadata(resolve(path) / PARAMS).tree
    return jax.tree.map(lambda m: np.dtype(m.dtype), tree)


def check_stored_shapes(path: str | os.PathLike, cfg: ModelConfig) -> None:
    """Every stored tensor has the shape `cfg` gives it (read from Orbax's metadata, not loaded)."""
    path = resolve(path)
    stored = ocp.StandardCheckpointHandler().metadata((path / PARAMS).absolute()).tree
    expected = nnx.to_pure_dict(nnx.state(abstract_model(cfg)))
    shapes = {key: tuple(m.shape) for key, m in jax.tree_util.tree_flatten_with_path(stored)[0]}
    for key, a in jax.tree_util.tree_flatten_with_path(expected)[0]:
        name = jax.tree_util.keystr(key, simple=True, separator=".")
        if key not in shapes:
            raise LimaError(f"checkpoint {path}: tensor {name} is missing")
        if shapes[key] != tuple(a.shape):
            raise LimaError(f"checkpoint {path}: tensor {name} has shape {shapes[key]}, the model config says {tuple(a.shape)}")


def load_params(
    path: str | os.PathLike, cfg: ModelConfig | None = None, shardings: Any = None, keep_dtype: bool = False
) -> tuple[ModelConfig, dict]:
    """Restores the parameters as jax arrays in `cfg.param_dtype` (or, with `keep_dtype`, as
    stored), laid out by `shardings` (a tree of jax.sharding.Sharding) or on the default device.
    `cfg` defaults to the checkpoint's own config; a mismatch in shapes is a LimaError."""
    path = resolve(path)
    cfg = cfg or load_model_config(path)
    target = nnx.to_pure_dict(nnx.state(abstract_model(cfg)))
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's, on a slice
        shardings = jax.tree.map(lambda _: device, target)
    stored = stored_dtypes(path)
    if jax.tree.structure(stored) != jax.tree.structure(target):
        raise LimaError(f"checkpoint {path}: its parameter names do not match the model config")
    target = jax.tree.map(
        lambda a, s, d: jax.ShapeDtypeStruct(a.shape, d if keep_dtype else a.dtype, sharding=s), target, shardings, stored
    )
    record = (saved_checksums(path) or {}).get(PARAMS)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            params = ckptr.restore(path / PARAMS, checksums.read_as(target, record))
        except (ValueError, KeyError) as e:
            raise LimaError(f"checkpoint {path}: parameters do not match the model config ({str(e).splitlines()[0]})") from None
        except Exception as e:  # noqa: BLE001 - Orbax wraps TensorStore's errors (a truncated file) in a bare Exception
            raise LimaError(f"checkpoint {path}: cannot read its parameters ({root_cause(e)})") from None
    return cfg, checksums.checked(params, target, record, f"checkpoint {path}")


def tokenizer_path(path: str | os.PathLike) -> Path | None:
    """The tokenizer saved with the checkpoint, or with the run a step belongs to, if any: the folder
    holding a `tokenizer.json`, else the `tokenizer.model` file."""
    step = resolve(path)
    for folder in (step, step.parent.parent):
        if (folder / text_tokenizers.HF_FILE).is_file():
            return folder
        if (folder / TOKENIZER).is_file():
            return folder / TOKENIZER
    return None


def run_info(path: str | os.PathLike) -> dict[str, Any]:
    """What a training run recorded with a step (e.g. `eot_id`); empty for a converted checkpoint."""
    step = resolve(path)
    if not (step / "run").is_dir():
        return {}
    return _json_item(step / "run")


def _json_item(item: Path) -> Any:
    """An Orbax JSON item; an empty or damaged one is one line naming its file."""
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
        try:
            return ckptr.restore(item)
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            raise LimaError(f"{item / 'metadata'}: not valid JSON ({str(e).splitlines()[0]}); the checkpoint is damaged") from None
