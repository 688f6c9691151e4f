"""How much of a model's context a server can take on this host: the memory the prefill of its largest
batch needs at each prompt width, against the memory free once the weights are loaded."""
from __future__ import annotations

import os

import jax
import numpy as np

from lima_jax.inference.sampler import PREFILL_CHUNK
from lima_jax.model import ModelConfig

FREE_FRACTION = 0.8  # of the free memory, what one prefill may take (XLA's own buffers need the rest)


def prefill_bytes(cfg: ModelConfig, rows: int, width: int, max_new_tokens: int) -> int:
    """The peak beyond the weights of prefilling `rows` prompts of `width` tokens: the KV cache of every
    layer (width + max_new_tokens slots), and for one chunk of the prompt (`sampler.PREFILL_CHUNK`
    tokens) one layer's fp32 attention scores and probabilities (rows x heads x chunk x slots, each)
    and its MLP's activations."""
    slots, chunk = width + max_new_tokens, min(width, PREFILL_CHUNK)
    cache = rows * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.resolved_head_dim * slots * np.dtype(cfg.dtype).itemsize
    scores = 2 * rows * cfg.num_heads * chunk * slots * 4
    mlp = 3 * rows * chunk * cfg.ffn_dim * 4
    return cache + scores + mlp


def free_bytes(device: jax.Device) -> int | None:
    """What the device can still allocate (an accelerator's own count; on a CPU the host's available
    memory), or None where neither is known."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None


def fitting_context(cfg: ModelConfig, rows: int, max_tokens: int, widths: list[int], free: int | None) -> int:
    """The longest of `widths` (served contexts to choose from, ascending) whose prefill of `rows` prompts
    fits FREE_FRACTION of `free` bytes; the shortest if none does, the longest if `free` is unknown."""
    if free is None:
        return widths[-1]
    fits = [w for w in widths if prefill_bytes(cfg, rows, w, min(max_tokens, w - 1)) <= FREE_FRACTION * free]
    return fits[-1] if fits else widths[0]
