"""Hugging Face LLaMA folders: config.json plus safetensors (one file, or shards with an index).

Reading memory-maps each safetensors file and hands out one tensor at a time; writing streams
tensors into shards of at most `max_shard_bytes`, as `save_pretrained` lays them out, locally or to
`gs://`.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save, save_file

from lima_jax.data.tokenizer import ChatTokenizer
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig
from lima_jax.storage.paths import Path, is_cloud, user_path
from lima_jax.weights import hf_chat
from lima_jax.weights.names import params_to_hf

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"


def config_from_hf(hf: dict[str, Any], source: str = CONFIG) -> ModelConfig:
    """ModelConfig from a LLaMA config.json; anything we would compute differently is an error."""
    if hf.get("model_type", "llama") != "llama":
        raise LimaError(f"{source}: model_type {hf.get('model_type')!r} is not a LLaMA architecture")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise LimaError(f"{source}: rope scaling type {rope_type!r} is not supported")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise LimaError(f"{source}: {key}=true is not supported (LLaMA has no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise LimaError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (LLaMA uses silu)")
    try:
        dim, heads = hf["hidden_size"], hf["num_attention_heads"]
        eos = hf.get("eos_token_id", 2)
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            dim=dim,
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=0 if hf.get("head_dim") in (None, dim // heads) else hf["head_dim"],
            ffn_dim=hf["intermediate_size"],
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_len=hf.get("max_position_embeddings", 2048),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_id=hf.get("bos_token_id", 1) if hf.get("bos_token_id") is not None else 1,
            eos_id=(eos[0] if isinstance(eos, list) else eos) if eos is not None else 2,
        )
    except KeyError as e:
        raise LimaError(f"{source}: missing key {e.args[0]}") from None


def config_to_hf(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.used_vocab_size,  # the padding rows are not exported (names.params_to_hf)
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": cfg.bos_id,
        "eos_token_id": cfg.eos_id,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def read(path: str | os.PathLike) -> tuple[ModelConfig, list[str], Callable[[str], np.ndarray]]:
    """The architecture, the tensor names, and a loader for one tensor of a Hugging Face folder."""
    folder = pathlib.Path(path)
    config_file = folder / CONFIG
    if not config_file.is_file():
        raise LimaError(f"{config_file}: missing file (a Hugging Face folder needs config.json)")
    try:
        cfg = config_from_hf(json.loads(config_file.read_text()), str(config_file))
    except json.JSONDecodeError as e:
        raise LimaError(f"{config_file}:{e.lineno}: not valid JSON ({e.msg})") from None

    index_file = folder / INDEX
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            raise LimaError(f"{folder}: missing file model.safetensors (no *.safetensors, no {INDEX})")
    for name in files:
        if not (folder / name).is_file():
            raise LimaError(f"{folder / name}: missing file (listed in {INDEX})")
    handles = {name: safe_open(folder / name, framework="numpy") for name in files}
    where = {key: name for name, h in handles.items() for key in h.keys()}

    def get(key: str) -> np.ndarray:
        return handles[where[key]].get_tensor(key)

    return cfg, list(where), get


def write(
    path: str | os.PathLike,
    params: dict,
    cfg: ModelConfig,
    *,
    tokenizer: ChatTokenizer | None = None,
    eot_id: int | None = None,
    max_shard_bytes: int = 5 * 2**30,
    overwrite: bool = False,
) -> Path:
    """Writes a folder that `transformers.AutoModelForCausalLM.from_pretrained` loads, with the
    tokenizer, chat template and stop tokens of a model fine-tuned with EOT `eot_id` (`hf_chat`)."""
    folder = user_path(path)
    if folder.exists():
        if not overwrite:
            raise LimaError(f"{folder} already exists; choose a new output path (or pass --overwrite)")
        folder.rmtree()
    folder.mkdir(parents=True)

    written: list[tuple[str, list[str], int]] = []  # (temporary file, tensor names, bytes)
    current: dict[str, np.ndarray] = {}
    size, dtype = 0, None
    for name, tensor in params_to_hf(params, cfg):
        dtype = dtype or np.dtype(tensor.dtype).name
        if current and size + tensor.nbytes > max_shard_bytes:
            written.append(_flush(folder, current, len(written)))
            current, size = {}, 0
        current[name] = tensor
        size += tensor.nbytes
    written.append(_flush(folder, current, len(written)))

    # Name shards model-0000i-of-0000n only once n is known, as save_pretrained does.
    n = len(written)
    weight_map, total = {}, 0
    for i, (tmp, keys, nbytes) in enumerate(written):
        final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        if is_cloud(folder):  # no rename there: a server-side copy (gcsfs's rename tries a move API first, which
            (folder / tmp).copy(folder / final)  # not every endpoint has, and retries its refusal for half a minute)
            (folder / tmp).unlink()
        else:
            (folder / tmp).rename(folder / final)
        weight_map.update({k: final for k in keys})
        total += nbytes
    if n > 1:
        (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / CONFIG).write_text(json.dumps(config_to_hf(cfg, dtype or "float32"), indent=2))
    (folder / hf_chat.GENERATION_CONFIG).write_text(json.dumps(hf_chat.generation_config(cfg, eot_id), indent=2))
    if tokenizer is not None:
        hf_chat.write_tokenizer(folder, tokenizer, eot_id, cfg)
    return folder


def _flush(folder: Path, shard: dict[str, np.ndarray], i: int) -> tuple[str, list[str], int]:
    name = f"shard-{i}.safetensors.tmp"
    if is_cloud(folder):  # safetensors writes local files only: upload the shard's bytes
        (folder / name).write_bytes(save(shard, metadata={"format": "pt"}))
    else:
        save_file(shard, str(folder / name), metadata={"format": "pt"})
    return name, list(shard), sum(t.nbytes for t in shard.values())
