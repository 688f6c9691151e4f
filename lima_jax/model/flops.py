"""Model FLOPs and device peaks, for MFU: the fraction of a device's peak that the model's own
arithmetic (not rematerialisation, not padding) achieves."""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from lima_jax.model.config import ModelConfig, param_count

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


def train_flops_per_token(cfg: ModelConfig, seq_len: int, frozen: bool = False) -> float:
    """PaLM's model FLOPs (appendix B): 6 per matmul parameter per token (forward + backward), plus
    causal-free attention scores and values, 12 * layers * heads * head_dim * seq_len. The input
    embedding is a gather, not a matmul: its V*D parameters are left out (the output projection is
    a matmul and counts), unless it is tied to the output head. With the weights `frozen` (a LoRA run),
    the backward pass computes no weight gradients: 4 per parameter (the adapters' own are left out)."""
    gathered = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim
    per_parameter = 4.0 if frozen else 6.0
    return per_parameter * (param_count(cfg) - gathered) + 12.0 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * seq_len


MATMUL_SIZES = (1024, 1536, 2048)  # square fp32 matmuls; the best of them is a CPU's "peak"


def published_peak_tflops(device_kind: str) -> float | None:
    """The published dense bf16 peak for a known accelerator kind (e.g. "TPU v4"), else None."""
    for kind, tflops in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if device_kind.startswith(kind):
            return tflops
    return None


class MatmulProbe:
    """This device's fp32 matmul throughput, compiled once so it can be measured again and again
    (between benchmark steps, so the peak and the steps it divides see the same machine)."""

    def __init__(self, size: int):
        self.size = size
        self.operand = jnp.ones((size, size), jnp.float32)
        self.fn = jax.jit(lambda x: x @ x)

    def __call__(self, repeats: int = 3) -> float:
        """TFLOP/s of the fastest of `repeats` matmuls."""
        return 2 * self.size**3 / best_seconds(self.fn, self.operand, repeats) / 1e12


def measured_matmul_tflops(sizes: tuple[int, ...] = MATMUL_SIZES, repeats: int = 5) -> float:
    """This device's best fp32 matmul throughput over a few sizes, measured now: what CPU MFU is
    quoted against ("the fraction of what this machine's matmuls reach")."""
    return max(MatmulProbe(size)(repeats) for size in sizes)


def best_seconds(fn, arg: jax.Array, repeats: int) -> float:
    """The fastest of `repeats` timed calls of a compiled `fn(arg)`, after one untimed call."""
    fn(arg).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def fixed_peak_tflops(device: jax.Device, override: float = 0.0) -> tuple[float, str] | None:
    """(Peak TFLOP/s, where it came from) when it needs no measuring: the override, else the
    published figure for a known accelerator; None on a CPU (its peak is measured)."""
    if override > 0:
        return override, "config.peak_tflops"
    published = published_peak_tflops(device.device_kind)
    if published is not None and device.platform != "cpu":
        return published, "published bf16 peak"
    return None


def fastest_matmul_probe(sizes: tuple[int, ...] = MATMUL_SIZES, repeats: int = 2) -> MatmulProbe:
    """The probe of the size this device multiplies fastest (a CPU's peak, measured again later)."""
    probes = [MatmulProbe(size) for size in sizes]
    return max(probes, key=lambda probe: probe(repeats))


def peak_tflops(device: jax.Device, override: float = 0.0) -> tuple[float, str]:
    """(Per-device peak TFLOP/s, where it came from), the one denominator of every MFU we report
    (training metrics, the bench, AOT): the override, the published figure for a known
    accelerator, else this device's measured fp32 matmul best."""
    return fixed_peak_tflops(device, override) or (
        _measured_once(), f"measured fp32 matmul, best of {'/'.join(map(str, MATMUL_SIZES))}")


@functools.cache
def _measured_once() -> float:
    """The measured peak, once per process: every run a process starts (a sweep, a test session)
    divides by the same figure, and none pays the second or so of matmuls again."""
    return measured_matmul_tflops()
