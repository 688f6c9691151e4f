"""LLaMA-1 13B: 64 examples per batch, residual dropout up to 0.2."""
from lima_jax.recipe import lima_config


def get_config():
    return lima_config(
        "13b",
        dim=5120, num_layers=40, num_heads=40, num_kv_heads=40, ffn_dim=13824, vocab_size=32000,
        max_len=2048, norm_eps=1e-6, residual_dropout=0.2, dtype="bfloat16",
    )
