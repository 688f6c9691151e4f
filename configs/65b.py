"""LLaMA-1 65B, LIMA's model: 32 examples per batch, residual dropout up to 0.3."""
from lima_jax.recipe import lima_config


def get_config():
    config = lima_config(
        "65b",
        batch_size=32,
        dim=8192, num_layers=80, num_heads=64, num_kv_heads=64, ffn_dim=22016, vocab_size=32000,
        max_len=2048, norm_eps=1e-6, residual_dropout=0.3, dtype="bfloat16",
    )
    # Fits a v4-128 slice (64 chips x 32 GiB): FSDP over 32 chips, 2-way tensor parallelism. With
    # the splash kernel (`model.attention=auto` on TPU) each layer keeps q, k, v and the attention
    # output for the backward pass instead of recomputing them: `python -m lima_jax.aot --config=65b
    # --topology=v4-128` reports 26.7 GiB per chip (full remat: 20.7 GiB; save_dots does not fit).
    config.mesh.tensor = 2
    config.model.remat = "save_attention"
    return config
