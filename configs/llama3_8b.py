"""Llama 3 8B: 8 KV heads, a 128,256-token vocabulary and rotary theta 500,000."""
from lima_jax.recipe import lima_config


def get_config():
    return lima_config(
        "llama3_8b",
        dim=4096, num_layers=32, num_heads=32, num_kv_heads=8, ffn_dim=14336, vocab_size=128256,
        max_len=8192, norm_eps=1e-5, rope_theta=500000.0, bos_id=128000, eos_id=128001,
        residual_dropout=0.2, dtype="bfloat16",
    )
