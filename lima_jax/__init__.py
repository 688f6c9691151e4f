"""lima_jax: LIMA's supervised fine-tuning recipe for LLaMA models, in JAX."""

__version__ = "0.1.0"
