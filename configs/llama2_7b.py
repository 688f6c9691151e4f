"""Llama 2 7B: LLaMA-1 7B's shape with RMSNorm eps 1e-5 and a 4096-token context."""
from lima_jax.recipe import lima_config


def get_config():
    return lima_config(
        "llama2_7b",
        dim=4096, num_layers=32, num_heads=32, num_kv_heads=32, ffn_dim=11008, vocab_size=32000,
        max_len=4096, norm_eps=1e-5, residual_dropout=0.2, dtype="bfloat16",
    )
