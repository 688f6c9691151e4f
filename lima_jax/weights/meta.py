"""Reads Meta's original LLaMA release folder: `params.json` plus `consolidated.NN.pth` shards.

Big models ship as model-parallel shards, each tensor cut along the axis its parallel layer splits.
The shards are memory-mapped and `get` merges one tensor at a time, so converting 65B needs about
one copy of the weights in host memory. Tensors come out under Hugging Face names and in its layout
(q/k rows in rotate-half order), ready for `weights.names.params_from_hf`.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any, Callable

import ml_dtypes
import numpy as np

from lima_jax.weights.names import hf_shapes, interleaved_to_rotate_half, natural_key
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig

# Meta name -> (Hugging Face name, axis the shards are concatenated on). Column-parallel layers
# split their output rows (axis 0), row-parallel ones their input columns (axis 1); None means
# replicated in every shard; "embed" is decided from the shard's shape (see _embedding_axis).
_LAYER = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}
_TOP = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", "embed"),
    "norm.weight": ("model.norm.weight", None),
    "output.weight": ("lm_head.weight", 0),
}
_IGNORED = {"rope.freqs"}  # precomputed rotary table, not a weight
_LAYER_NAME = re.compile(r"layers\.(\d+)\.(.+)")
_SHARD_NAME = re.compile(r"consolidated\.(\d+)\.pth")


def read(path: str | os.PathLike) -> tuple[ModelConfig, list[str], Callable[[str], np.ndarray]]:
    """The architecture, the Hugging Face names of the tensors held, and `get(name)` for one."""
    folder = pathlib.Path(path)
    params_file = folder / "params.json"
    if not params_file.is_file():
        raise LimaError(f"{folder}: missing params.json (not a Meta LLaMA checkpoint folder?)")
    files = _shard_files(folder)
    torch = _import_torch()
    shards = [_load(torch, f) for f in files]
    for f, shard in zip(files[1:], shards[1:]):
        differ = sorted(set(shards[0]) ^ set(shard))
        if differ:
            raise LimaError(f"{f}: holds different tensors than {files[0].name} (first: {differ[0]})")
    table = _table(folder, shards[0])
    cfg = _config(params_file, shards, table)
    if "model.embed_tokens.weight" in table:
        emb = table["model.embed_tokens.weight"][0]
        table["model.embed_tokens.weight"] = (emb, _embedding_axis(shards, emb, cfg.dim))
    shapes = hf_shapes(cfg)

    def get(hf_name: str) -> np.ndarray:
        if hf_name not in table:
            raise LimaError(f"{folder}: no tensor {hf_name}")
        meta_name, axis = table[hf_name]
        w = _joined(folder, files, [_numpy(torch, shard[meta_name]) for shard in shards], meta_name, axis)
        expected = shapes[_suffix(hf_name)]
        if tuple(w.shape) != expected:
            raise LimaError(
                f"{folder}: tensor {meta_name} ({hf_name}): expected shape {expected}, found {tuple(w.shape)}"
            )
        # Meta pairs rotary dims (0,1), (2,3), ...; our model uses Hugging Face's rotate-half order.
        if hf_name.endswith("q_proj.weight"):
            w = interleaved_to_rotate_half(w, cfg.num_heads)
        elif hf_name.endswith("k_proj.weight"):
            w = interleaved_to_rotate_half(w, cfg.num_kv_heads)
        return w

    return cfg, sorted(table, key=natural_key), get


def _table(folder: pathlib.Path, shard: dict) -> dict[str, tuple[str, Any]]:
    """Hugging Face name -> (Meta name, the axis its shards join along; None: replicated)."""
    table: dict[str, tuple[str, Any]] = {}
    for name in shard:
        if name in _IGNORED:
            continue
        hf = _hf_name(name)
        if hf is None:
            raise LimaError(f"{folder}: unknown tensor name {name}")
        table[hf[0]] = (name, hf[1])
    return table


def _joined(folder: pathlib.Path, files: list[pathlib.Path], pieces: list[np.ndarray], meta_name: str,
            axis: int | None) -> np.ndarray:
    """One tensor from its shards' pieces: joined along `axis`, or (replicated) the one they all hold."""
    if axis is None:  # replicated: every shard must agree, or the checkpoint is corrupt
        for f, piece in zip(files[1:], pieces[1:]):
            if not np.array_equal(piece, pieces[0]):
                raise LimaError(f"{f}: {meta_name} differs from {files[0].name}'s (it should be replicated)")
        return pieces[0]
    if len(pieces) == 1:
        return pieces[0]  # a view of the mapped file; params_from_hf copies it
    try:
        return np.concatenate(pieces, axis=axis)
    except ValueError:
        found = ", ".join(str(tuple(p.shape)) for p in pieces)
        raise LimaError(f"{folder}: tensor {meta_name}: shards do not join along axis {axis}: {found}") from None


def _shard_files(folder: pathlib.Path) -> list[pathlib.Path]:
    found = {int(m.group(1)): f for f in folder.glob("consolidated.*.pth") if (m := _SHARD_NAME.fullmatch(f.name))}
    if not found:
        raise LimaError(f"{folder}: missing consolidated.00.pth (no consolidated.*.pth shard)")
    for i in range(max(found) + 1):
        if i not in found:
            raise LimaError(f"{folder}: missing consolidated.{i:02d}.pth")
    return [found[i] for i in range(len(found))]


def _import_torch():
    try:
        import torch
    except ImportError:
        raise LimaError("reading Meta .pth checkpoints needs torch (CPU): pip install torch==2.13.0") from None
    return torch


def _load(torch, file: pathlib.Path) -> dict:
    # mmap: tensors stay on disk until a merge touches them; weights_only: no pickled code runs.
    try:
        return torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for unreadable files
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LimaError(f"{file}: cannot memory-map this checkpoint: {detail}") from None


def _numpy(torch, t) -> np.ndarray:
    """A numpy view of a CPU tensor, keeping its dtype (numpy has no native bfloat16)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _hf_name(name: str) -> tuple[str, Any] | None:
    if name in _TOP:
        return _TOP[name]
    m = _LAYER_NAME.fullmatch(name)
    if m and m.group(2) in _LAYER:
        hf, axis = _LAYER[m.group(2)]
        return f"model.layers.{m.group(1)}.{hf}", axis
    return None


def _suffix(hf_name: str) -> str:
    m = re.fullmatch(r"model\.layers\.\d+\.(.+)", hf_name)
    return m.group(1) if m else hf_name


def _merged_rows(shards: list[dict], name: str, axis: int) -> int:
    return sum(int(s[name].shape[axis]) for s in shards)


def _embedding_axis(shards: list[dict], name: str, dim: int) -> int:
    """LLaMA-1/2 split the embedding's columns (ParallelEmbedding), LLaMA-3 its vocabulary rows
    (VocabParallelEmbedding); a shard holding all `dim` columns must be the latter."""
    cols = int(shards[0][name].shape[1])
    if cols == dim:
        return 0
    if cols * len(shards) == dim:
        return 1
    raise LimaError(f"{name}: shard shape {tuple(shards[0][name].shape)} fits neither dim {dim} nor dim/{len(shards)}")


def _config(params_file: pathlib.Path, shards: list[dict], table: dict[str, tuple[str, Any]]) -> ModelConfig:
    try:
        p = json.loads(params_file.read_text())
    except ValueError as e:
        raise LimaError(f"{params_file}: not valid JSON: {e}") from None
    missing = [k for k in ("dim", "n_layers", "n_heads", "norm_eps") if k not in p]
    if missing:
        raise LimaError(f"{params_file}: missing key {missing[0]}")
    dim, n_layers, n_heads, norm_eps = int(p["dim"]), int(p["n_layers"]), int(p["n_heads"]), float(p["norm_eps"])
    if p.get("use_scaled_rope"):  # Llama 3.1's rotary frequency scaling; our rotary has none
        raise LimaError(f"{params_file}: use_scaled_rope (Llama 3.1+ rotary scaling) is not supported")
    n_kv_heads = int(p.get("n_kv_heads") or n_heads)

    vocab = int(p.get("vocab_size", -1))
    if vocab <= 0:  # LLaMA-1 writes -1: the tokenizer decides, so read it off the embedding
        if "model.embed_tokens.weight" not in table:
            raise LimaError(f"{params_file}: vocab_size is {vocab} and no tok_embeddings.weight to infer it from")
        emb = table["model.embed_tokens.weight"][0]
        axis = _embedding_axis(shards, emb, dim)
        vocab = _merged_rows(shards, emb, 0) if axis == 0 else int(shards[0][emb].shape[0])

    # The ffn dim from the shapes: the multiple_of/ffn_dim_multiplier formula is easy to get wrong.
    w1 = "layers.0.feed_forward.w1.weight"
    if w1 in shards[0]:
        ffn_dim = _merged_rows(shards, w1, 0)
    else:  # no layer to measure; a missing tensor is reported by params_from_hf anyway
        hidden = int(2 * 4 * dim / 3)
        if p.get("ffn_dim_multiplier"):
            hidden = int(float(p["ffn_dim_multiplier"]) * hidden)
        multiple_of = int(p.get("multiple_of", 256))
        ffn_dim = multiple_of * -(-hidden // multiple_of)

    return ModelConfig(
        vocab_size=vocab,
        dim=dim,
        num_layers=n_layers,
        num_heads=n_heads,
        num_kv_heads=n_kv_heads,
        ffn_dim=ffn_dim,
        norm_eps=norm_eps,
        rope_theta=float(p.get("rope_theta", 10000.0)),
        # Meta's folders do not say which ids are BOS/EOS; LLaMA-3's tiktoken vocabulary puts
        # <|begin_of_text|> and <|end_of_text|> at 128000/128001, LLaMA-1/2's sentencepiece at 1/2.
        bos_id=128000 if vocab == 128256 else 1,
        eos_id=128001 if vocab == 128256 else 2,
    )
