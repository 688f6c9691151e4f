"""A tiny LLaMA that trains on the embedded demo conversations in about a minute on a CPU.

Its shapes are llama2.c's stories260K model's. Unlike the paper's runs it starts from random
weights, so it learns with a larger learning rate (3e-3 falling to 3e-4) than LIMA's 1e-5 for a
pretrained model, and its short demo texts need no 2048-token rows.
"""
from lima_jax.recipe import lima_config


def get_config():
    config = lima_config(
        "tiny",
        dim=64, num_layers=5, num_heads=8, num_kv_heads=4, ffn_dim=172, vocab_size=512,
        max_len=512, norm_eps=1e-5, residual_dropout=0.2, dtype="float32",
    )
    config.data.max_len = 512
    config.optim.lr = 3e-3
    config.optim.end_lr = 3e-4
    return config
