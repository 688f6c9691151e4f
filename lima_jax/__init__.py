"""lima_jax: LIMA's supervised fine-tuning recipe for LLaMA models, in JAX."""

from lima_jax.tpu_probe import quiet_tpu_probe

# Before any lima_jax module imports JAX: without a TPU, keep libtpu's probe off stderr.
quiet_tpu_probe()

__version__ = "0.1.0"
