"""Reads a llama2.c checkpoint (`.bin`, legacy version 0, as run.c loads it).

Layout: seven little-endian int32s (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len; a negative vocab_size means the classifier is stored separately), then float32 tensors in
a fixed order, each per-layer matrix a torch `Linear` weight (out, in) stacked over layers. The file
is memory-mapped; tensors come out under Hugging Face names, ready for `weights.names.params_from_hf`.
"""
from __future__ import annotations

import math
import os
import pathlib
import re
from typing import Callable

import numpy as np

from lima_jax.weights.names import interleaved_to_rotate_half
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig

_HEADER_BYTES = 7 * 4
_VERSIONED_MAGIC = 0x616B3432  # "ak42": export.py's version >= 1 files, a different layout

# Hugging Face per-layer suffix -> llama2.c tensor.
_LAYER = {
    "input_layernorm.weight": "rms_att",
    "self_attn.q_proj.weight": "wq",
    "self_attn.k_proj.weight": "wk",
    "self_attn.v_proj.weight": "wv",
    "self_attn.o_proj.weight": "wo",
    "post_attention_layernorm.weight": "rms_ffn",
    "mlp.gate_proj.weight": "w1",
    "mlp.down_proj.weight": "w2",
    "mlp.up_proj.weight": "w3",
}
_TOP = {"model.embed_tokens.weight": "token_embedding", "model.norm.weight": "rms_final", "lm_head.weight": "wcls"}


def read(path: str | os.PathLike) -> tuple[ModelConfig, list[str], Callable[[str], np.ndarray]]:
    """The architecture, the Hugging Face names of the tensors held, and `get(name)` for one."""
    path = pathlib.Path(path)
    header = _header(path)
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = header
    shared = vocab > 0  # run.c: a negative vocab_size means a separate classifier follows
    tensors = _tensors(path, header, _shapes(header))
    cfg = ModelConfig(
        vocab_size=abs(vocab),
        dim=dim,
        num_layers=n_layers,
        num_heads=n_heads,
        num_kv_heads=n_kv_heads,
        ffn_dim=hidden,
        norm_eps=1e-5,  # llama2.c's model.py and run.c
        max_len=seq_len,
        tie_embeddings=shared,
        bos_id=1,
        eos_id=2,
    )
    names = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if shared else ["lm_head.weight"])
    names += [f"model.layers.{i}.{s}" for i in range(n_layers) for s in _LAYER]

    def get(hf_name: str) -> np.ndarray:
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
        if hf_name in _TOP and _TOP[hf_name] in tensors:
            return np.asarray(tensors[_TOP[hf_name]])
        if not (m and m.group(2) in _LAYER and int(m.group(1)) < n_layers):
            raise LimaError(f"{path}: no tensor {hf_name}")
        key = _LAYER[m.group(2)]
        w = np.asarray(tensors[key][int(m.group(1))])
        # llama2.c rotates interleaved pairs (0,1), (2,3), ...; our model uses rotate-half order.
        if key == "wq":
            return interleaved_to_rotate_half(w, n_heads)
        if key == "wk":
            return interleaved_to_rotate_half(w, n_kv_heads)
        return w

    return cfg, names, get


def _header(path: pathlib.Path) -> list[int]:
    """The seven int32s of a version 0 file, checked to describe a model."""
    if not path.is_file():
        raise LimaError(f"{path}: no such file")
    size = path.stat().st_size
    if size < _HEADER_BYTES:
        raise LimaError(f"{path}: expected at least {_HEADER_BYTES} bytes of llama2.c header, found {size} bytes")
    header = [int(x) for x in np.fromfile(path, dtype="<i4", count=7)]
    if header[0] == _VERSIONED_MAGIC:
        raise LimaError(f"{path}: a versioned llama2.c export; only the legacy version 0 layout is supported")
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = header
    if min(dim, hidden, n_layers, n_heads, n_kv_heads, abs(vocab), seq_len) <= 0 or dim % n_heads or n_heads % n_kv_heads:
        raise LimaError(f"{path}: not a llama2.c checkpoint (header {header})")
    return header


def _shapes(header: list[int]) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, in the order the file holds them."""
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = header
    hd = dim // n_heads
    shapes = {
        "token_embedding": (abs(vocab), dim),
        "rms_att": (n_layers, dim),
        "wq": (n_layers, n_heads * hd, dim),
        "wk": (n_layers, n_kv_heads * hd, dim),
        "wv": (n_layers, n_kv_heads * hd, dim),
        "wo": (n_layers, dim, n_heads * hd),
        "rms_ffn": (n_layers, dim),
        "w1": (n_layers, hidden, dim),
        "w2": (n_layers, dim, hidden),
        "w3": (n_layers, hidden, dim),
        "rms_final": (dim,),
        "freq_cis_real": (seq_len, hd // 2),  # rotary tables; our model computes its own
        "freq_cis_imag": (seq_len, hd // 2),
    }
    if vocab < 0:
        shapes["wcls"] = (abs(vocab), dim)
    return shapes


def _tensors(path: pathlib.Path, header: list[int], shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The file's tensors, memory-mapped, once its size matches the shapes."""
    size = path.stat().st_size
    expected = _HEADER_BYTES + 4 * sum(math.prod(s) for s in shapes.values())
    if size != expected:
        raise LimaError(
            f"{path}: expected {expected} bytes for header {header}, found {size} bytes"
            " (truncated, or not a llama2.c version 0 file?)"
        )
    raw = np.memmap(path, dtype="<f4", mode="r", offset=_HEADER_BYTES)
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        tensors[name] = raw[offset : offset + n].reshape(shape)
        offset += n
    return tensors
