"""Helpers to build small Hugging Face LLaMA models, the reference the tests compare against."""
from __future__ import annotations

import numpy as np
import pytest

from lima_jax.model import ModelConfig

torch = pytest.importorskip("torch", reason="torch (CPU) is the reference implementation: pip install torch==2.13.0")
transformers = pytest.importorskip("transformers", reason="transformers is the reference implementation")


def hf_config(cfg: ModelConfig) -> "transformers.LlamaConfig":
    return transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.resolved_head_dim,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_len,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id,
        attn_implementation="eager",
    )


def random_hf_model(cfg: ModelConfig, seed: int = 0) -> "transformers.LlamaForCausalLM":
    """A LlamaForCausalLM with random weights, norms included (ones would hide a layout bug)."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(hf_config(cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 else 0.0))
    return model


def hf_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
