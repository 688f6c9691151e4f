"""Benchmarks, side by side with `transformers` in one process: the real train step's throughput and
MFU (`train`) and the sampler's decode rates (`decode`). Run by `python -m lima_jax.bench`; whether
the training loop's host waits for the device is `python -m lima_jax.bench.step_timing`."""
