"""Weights: the lima_jax checkpoint every stage reads (`checkpoint`, Orbax), the one table between
Hugging Face names/layouts and our parameter tree (`names`), the Hugging Face, Meta and llama2.c
formats (`hf`, `meta`, `llama2c`), and conversion between them (`convert`, run by
`python -m lima_jax.convert`)."""
