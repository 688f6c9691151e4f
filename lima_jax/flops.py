"""Model FLOPs and device peaks, for MFU: the fraction of a device's peak that the model's own
arithmetic (not rematerialisation, not padding) achieves."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from lima_jax.model import ModelConfig, param_count

# Dense bf16 peak TFLOP/s per device (a TPU chip, a GPU), by jax's device_kind.
PEAK_TFLOPS = {
    "TPU v4": 275.0,
    "TPU v5": 459.0,  # v5p
    "TPU v5p": 459.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
    "NVIDIA H100": 989.0,
    "NVIDIA H200": 989.0,
    "NVIDIA A100": 312.0,
}


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """6 FLOPs per parameter per token (forward + backward) plus causal-free attention scores and
    values: 12 * layers * heads * head_dim * seq_len (the PaLM appendix convention)."""
    return 6.0 * param_count(cfg) + 12.0 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * seq_len


def measured_matmul_tflops(size: int = 1024, repeats: int = 5) -> float:
    """This device's fp32 matmul throughput, measured now: the CPU "peak" MFU is quoted against."""
    a = jnp.ones((size, size), jnp.float32)
    return 2 * size**3 / best_seconds(jax.jit(lambda x: x @ x), a, repeats) / 1e12


def best_seconds(fn, arg: jax.Array, repeats: int) -> float:
    """The fastest of `repeats` timed calls of a compiled `fn(arg)`, after one untimed call."""
    fn(arg).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def peak_tflops(device: jax.Device, override: float = 0.0) -> float:
    """Per-device peak: the override, the published figure for a known accelerator, else measured."""
    if override > 0:
        return override
    for kind, tflops in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if device.device_kind.startswith(kind):
            return tflops
    return measured_matmul_tflops()
