"""LLaMA-1 7B (LIMA's ablation model): 64 examples per batch, residual dropout up to 0.2."""
from lima_jax.recipe import lima_config


def get_config():
    return lima_config(
        "7b",
        dim=4096, num_layers=32, num_heads=32, num_kv_heads=32, ffn_dim=11008, vocab_size=32000,
        max_len=2048, norm_eps=1e-6, residual_dropout=0.2, dtype="bfloat16",
    )
