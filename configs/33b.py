"""LLaMA-1 33B (released as "30B"): 64 examples per batch, residual dropout up to 0.2."""
from lima_jax.recipe import lima_config


def get_config():
    return lima_config(
        "33b",
        dim=6656, num_layers=60, num_heads=52, num_kv_heads=52, ffn_dim=17920, vocab_size=32000,
        max_len=2048, norm_eps=1e-6, residual_dropout=0.2, dtype="bfloat16",
    )
