"""Helpers to build small Hugging Face LLaMA-family models (LLaMA, Mistral, Qwen2), the reference the tests compare against."""
from __future__ import annotations

import numpy as np
import pytest

from lima_jax.model import ModelConfig

torch = pytest.importorskip("torch", reason="torch (CPU) is the reference implementation: pip install torch==2.13.0")
transformers = pytest.importorskip("transformers", reason="transformers is the reference implementation")


def hf_config(cfg: ModelConfig) -> "transformers.PretrainedConfig":
    """The transformers config of `cfg`'s family (LlamaConfig, MistralConfig, Qwen2Config), built from
    transformers' own classes rather than from lima_jax's exporter."""
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": cfg.rope_factor,
                "low_freq_factor": cfg.rope_low_freq_factor, "high_freq_factor": cfg.rope_high_freq_factor,
                "original_max_position_embeddings": cfg.rope_original_max_len}
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.resolved_head_dim,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters=rope,
        max_position_embeddings=cfg.max_len,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id,
        attn_implementation="eager",
    )
    if cfg.family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    if cfg.family == "qwen2":
        return transformers.Qwen2Config(**common, use_sliding_window=False)
    return transformers.LlamaConfig(**common, attention_bias=cfg.qkv_bias)


def random_hf_model(cfg: ModelConfig, seed: int = 0) -> "transformers.PreTrainedModel":
    """A causal LM of `cfg`'s family with random weights, norms and biases included (ones and zeros
    would hide a layout bug)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    return model


def hf_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
