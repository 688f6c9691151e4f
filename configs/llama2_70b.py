"""Llama 2 70B: grouped-query attention with 8 KV heads; LIMA's 65B recipe (batch 32, dropout 0.3)."""
from lima_jax.recipe import lima_config


def get_config():
    return lima_config(
        "llama2_70b",
        batch_size=32,
        dim=8192, num_layers=80, num_heads=64, num_kv_heads=8, ffn_dim=28672, vocab_size=32000,
        max_len=4096, norm_eps=1e-5, residual_dropout=0.3, dtype="bfloat16",
    )
