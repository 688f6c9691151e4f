"""The lima_jax checkpoint (Orbax): a model's parameters plus the architecture that reads them.

A checkpoint directory holds three Orbax items, `params` (the parameter tree), `model` (the
ModelConfig as JSON) and `checksums` (each array's, checked when it is read: `weights/checksums.py`),
plus the tokenizer's files when one is known. A converted checkpoint and each step a training run saves
under `<workdir>/checkpoints/<step>/` share this layout (a step adds `run`), so everything that reads
weights takes a converted checkpoint, one step, or a run's workdir (its latest complete step: Orbax
renames a step, or on Cloud Storage marks it with a commit file, once it is whole). Every path may be
local or `gs://`. A LoRA run's step holds its adapters as `params` and a `lora` item (the LoraSpec, the
base's path and fingerprint); `load_params` reads the base as the run held it, with the adapters merged."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from lima_jax.data import text_tokenizers
from lima_jax.errors import LimaError
from lima_jax.lora import adapters as lora_adapters, base as lora_base
from lima_jax.lora.spec import LoraSpec
from lima_jax.model import ModelConfig, abstract_model, param_shardings
from lima_jax.storage.paths import Path, user_path
from lima_jax.weights import checksums

PARAMS = "params"
MODEL = "model"
CHECKSUMS = "checksums"
TOKENIZER = "tokenizer.model"
STEPS_DIR = "checkpoints"
LORA = "lora"  # a LoRA step's adapter record (its spec and base)


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
    return read_json_item(step / CHECKSUMS) if (step / CHECKSUMS).is_dir() else None


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
        raise LimaError(f"{path} already exists; choose a new output path (or pass overwrite=True)")
    with _checkpointer() as ckptr:
        ckptr.save(path, ocp.args.Composite(params=ocp.args.StandardSave(params), model=ocp.args.JsonSave(model_record(cfg)),
                                            checksums=ocp.args.JsonSave({PARAMS: checksums.of(params)})))
    if tokenizer is not None:
        text_tokenizers.copy_files(tokenizer, path)
    return path


def is_checkpoint(path: Path) -> bool:
    return (path / PARAMS).is_dir() and (path / MODEL).is_dir()


def is_adapter(path: Path) -> bool:
    """Whether a checkpoint is a LoRA run's step: its `params` are adapters, `lora` names their base."""
    return (path / LORA).is_dir()


def load_resized(path: str | os.PathLike, base: ModelConfig, cfg: ModelConfig, kept: int, mesh=None,
                 keep_dtype: bool = False) -> dict:
    """The checkpoint's parameters (architecture `base`) laid out for `cfg`'s vocabulary: its first `kept`
    rows; each id from there to `cfg.used_vocab_size` (a new EOT) a row and output column initialised to
    the mean of those; padding rows zero. Sharded on `mesh`, or on this process's first device."""
    stored = cfg.replace(vocab_size=base.vocab_size, vocab_padding=base.vocab_padding)
    _, params = load_params(path, stored, None if mesh is None else param_shardings(stored, mesh), keep_dtype)
    if stored == cfg:
        return params

    def resize(rows: jax.Array, axis: int) -> jax.Array:
        rows = jax.lax.slice_in_dim(rows, 0, kept, axis=axis)
        new = jnp.repeat(rows.mean(axis, keepdims=True), cfg.used_vocab_size - kept, axis=axis)
        pad = [(0, 0)] * rows.ndim
        pad[axis] = (0, cfg.vocab_padding)
        return jnp.pad(jnp.concatenate([rows, new.astype(rows.dtype)], axis=axis), pad)

    def grow(params):
        params = dict(params, embed=resize(params["embed"], 0))
        if "lm_head" in params:
            params["lm_head"] = resize(params["lm_head"], 1)
        return params

    return jax.jit(grow, out_shardings=None if mesh is None else param_shardings(cfg, mesh))(params)


def fingerprint(path: str | os.PathLike) -> str:
    """A short hash of a checkpoint's architecture and arrays (their saved checksums; for a checkpoint saved
    before checksums, their shapes and dtypes): another model, or other weights, have another."""
    path = resolve(path)
    record = (saved_checksums(path) or {}).get(PARAMS)
    if record is None:
        metadata = ocp.StandardCheckpointHandler().metadata(path / PARAMS).tree
        record = jax.tree.map(lambda m: [np.dtype(m.dtype).name, list(m.shape)], metadata)
    content = json.dumps({"model": read_json_item(path / MODEL), "params": record}, sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


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
    model_json = read_json_item(path / MODEL)
    if not isinstance(model_json, dict) or "config" not in model_json:
        raise LimaError(f"checkpoint {path}: {MODEL}/ holds no model config")
    return ModelConfig.from_dict(model_json["config"])


def stored_dtypes(path: str | os.PathLike) -> dict:
    """The parameter tree of the checkpoint with each leaf's stored dtype (e.g. bf16 from a hub)."""
    tree = ocp.StandardCheckpointHandler().metadata(resolve(path) / PARAMS).tree
    return jax.tree.map(lambda m: np.dtype(m.dtype), tree)


def check_stored_shapes(path: str | os.PathLike, cfg: ModelConfig) -> None:
    """Every stored tensor has the shape `cfg` gives it (read from Orbax's metadata, not loaded); a LoRA
    step's adapters are checked when they are merged."""
    path = resolve(path)
    if is_adapter(path):
        return
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
    `cfg` defaults to the checkpoint's own config; a mismatch in shapes is a LimaError. A LoRA run's
    step gives its base with the adapters merged."""
    path = resolve(path)
    cfg = cfg or load_model_config(path)
    target = nnx.to_pure_dict(nnx.state(abstract_model(cfg)))
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's, on a slice
        shardings = jax.tree.map(lambda _: device, target)
    if is_adapter(path):
        return cfg, _merged(path, cfg, shardings, keep_dtype)
    stored = stored_dtypes(path)
    if jax.tree.structure(stored) != jax.tree.structure(target):
        raise LimaError(f"checkpoint {path}: its parameter names do not match the model config")
    target = jax.tree.map(
        lambda a, s, d: jax.ShapeDtypeStruct(a.shape, d if keep_dtype else a.dtype, sharding=s), target, shardings, stored
    )
    return cfg, _restore_params(path, target, "parameters do not match the model config")


def _restore_params(path: Path, target: Any, mismatch: str) -> Any:
    """The `params` item read onto `target` (ShapeDtypeStructs with shardings) and checked against its saved
    checksums; a tree that does not fit is `mismatch` in one line, and so is an unreadable tensor file."""
    record = (saved_checksums(path) or {}).get(PARAMS)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            params = ckptr.restore(path / PARAMS, checksums.read_as(target, record))
        except (ValueError, KeyError) as e:
            raise LimaError(f"checkpoint {path}: {mismatch} ({str(e).splitlines()[0]})") from None
        except Exception as e:  # noqa: BLE001 - Orbax wraps TensorStore's errors (a truncated file) in a bare Exception
            raise LimaError(f"checkpoint {path}: cannot read its parameters ({root_cause(e)})") from None
    return checksums.checked(params, target, record, f"checkpoint {path}")


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
    return read_json_item(step / "run")


def read_json_item(item: Path) -> Any:
    """An Orbax JSON item; an empty or damaged one is one line naming its file."""
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
        try:
            return ckptr.restore(item)
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            raise LimaError(f"{item / 'metadata'}: not valid JSON ({str(e).splitlines()[0]}); the checkpoint is damaged") from None


# A LoRA run's step: its `params` are adapters, and `lora` records their spec and base. It reads as its base,
# rebuilt as the run held it, with the adapters merged.

def adapter_record(step: Path) -> dict[str, Any]:
    """The step's `lora` item: `spec` (LoraSpec's record), `base` (a path), `base_fingerprint`."""
    return read_json_item(step / LORA)


def _check_base(step: Path, info: dict[str, Any]) -> Path:
    """The base checkpoint the adapters were trained on, once it is found to be that very one."""
    where = info["base"]
    try:
        found = resolve(where)
    except LimaError:
        raise LimaError(f"checkpoint {step}: its base checkpoint {where} is missing; the adapters need it "
                        "(put it back at that path)") from None
    now = fingerprint(found)
    if now != info["base_fingerprint"]:
        raise LimaError(f"checkpoint {step}: its base {where} now holds other weights (fingerprint {now}, the adapters "
                        f"were trained on {info['base_fingerprint']})")
    return found


def adapter_base(step: Path, cfg: ModelConfig) -> tuple[LoraSpec, dict, dict]:
    """(spec, the base as the run held it fixed, each base leaf's stored dtype) for a LoRA step."""
    info = adapter_record(step)
    spec = LoraSpec.from_record(info["spec"])
    found = _check_base(step, info)
    params = load_resized(found, load_model_config(found), cfg, spec.rows[0], keep_dtype=True)
    return spec, lora_base.frozen(params, spec.base_dtype), jax.tree.map(lambda a: a.dtype, params)


def load_adapters(step: Path, cfg: ModelConfig, spec: LoraSpec) -> dict:
    """The step's adapters on this process's first device, checked against their saved checksums."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), lora_adapters.abstract(cfg, spec))
    return _restore_params(step, target, "its adapters do not match its lora record")


def _merged(step: Path, cfg: ModelConfig, shardings: Any, keep_dtype: bool = False) -> dict:
    """The model a LoRA step stands for: base + scale * a b for each targeted weight (quantized bases
    dequantized first), in `cfg.param_dtype`, or with `keep_dtype` in each base tensor's stored dtype."""
    spec, frozen, stored = adapter_base(step, cfg)
    trained = load_adapters(step, cfg, spec)
    dtype = lambda name_dtype: name_dtype if keep_dtype else jnp.dtype(cfg.param_dtype)  # noqa: E731

    def merge(trained, frozen):
        params = lora_adapters.merge(trained, frozen, spec)
        return jax.tree.map(lambda a, d: a.astype(dtype(d)), params, stored)

    return jax.jit(merge, out_shardings=shardings)(trained, frozen)
