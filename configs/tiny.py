"""A tiny LLaMA that trains in seconds on a CPU; the shapes of llama2.c's stories260K model."""
from lima_jax.config import lima_config


def get_config():
    return lima_config(
        "tiny",
        dim=64, num_layers=5, num_heads=8, num_kv_heads=4, ffn_dim=172, vocab_size=512,
        max_len=512, norm_eps=1e-5, residual_dropout=0.2, dtype="float32",
    )
