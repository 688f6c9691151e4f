"""Benchmarks, side by side with `transformers` in one process: the real train step's throughput and
MFU (`train`) and the sampler's decode rates (`decode`). Run by `python -m lima_jax.bench`; whether
the training loop's host waits for the device is `python -m lima_jax.bench.step_timing`.

The choices the command's flags offer live here, importable without JAX (for its `--help`)."""
from typing import Any

# Shortcuts for the model overrides of named benchmark shapes.
SHAPES: dict[str, dict[str, Any]] = {
    "none": {},
    # The CI shape: a 58M-parameter LLaMA (trained at sequence 512, batch 4).
    "ci": {
        "model.dim": 512,
        "model.num_layers": 8,
        "model.num_heads": 8,
        "model.num_kv_heads": 8,
        "model.ffn_dim": 1376,
        "model.vocab_size": 32000,
        "model.residual_dropout": 0.0,
    },
}
TORCH_ATTENTION = ("auto", "eager", "sdpa")
