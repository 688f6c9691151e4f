"""A LoRA run's adapters as a PEFT adapter folder: `adapter_config.json` and `adapter_model.safetensors`,
which `peft.PeftModel.from_pretrained` puts on the base's Hugging Face export, with the run's tokenizer
(its EOT and chat template) and a generation config that stops at EOT.

PEFT's LoRA is ours: y = x W + (lora_alpha / r) x A B, in torch's (out, in) layout, so each adapter
converts as its weight does (`names.layer_to_hf`). The rows of the tokens the run added (LIMA's EOT)
go as PEFT's `trainable_token_indices`: far smaller than `modules_to_save`'s full embedding and output
matrices, and what the run trained; the user first grows the base to the tokenizer (README, "One
accelerator"). PEFT applies the adapters to a full-precision base; a QLoRA run trained them against its
int8/NF4 base, which the merged export uses instead."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save

from lima_jax.data.tokenizer import ChatTokenizer
from lima_jax.lora.spec import LoraSpec
from lima_jax.model import ModelConfig
from lima_jax.storage.paths import Path
from lima_jax.weights import checkpoint, hf_chat
from lima_jax.weights.names import layer_tensors, layer_to_hf

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel's name for the wrapped LlamaForCausalLM
TOKEN_DELTA = "token_adapter.trainable_tokens_delta"


def _modules(cfg: ModelConfig) -> dict[str, str]:
    """Our weight (`wq`) -> its module under a Hugging Face layer (`self_attn.q_proj`)."""
    return {key: suffix.removesuffix(".weight") for suffix, key in layer_tensors(cfg).items() if suffix.endswith(".weight")}


def adapter_config(spec: LoraSpec, cfg: ModelConfig) -> dict:
    """adapter_config.json: LoRA on the targeted projections, the added tokens' rows trained whole."""
    modules = _modules(cfg)
    ids = list(range(*spec.rows))
    # A list adapts the input embedding (and, tied, the output with it); untied, the output rows are named too.
    tokens = (ids if cfg.tie_embeddings else {"embed_tokens": ids, "lm_head": ids}) if ids else None
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,  # the base is a lima_jax checkpoint: its HF export is where the user put it
        "r": spec.rank, "lora_alpha": int(spec.alpha) if spec.alpha.is_integer() else spec.alpha,
        "lora_dropout": spec.dropout, "bias": "none", "use_rslora": False, "use_dora": False,
        "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
        "target_modules": [modules[name].split(".")[-1] for name in spec.weights],
        "modules_to_save": None, "trainable_token_indices": tokens,
    }


def adapter_tensors(adapters: dict, spec: LoraSpec, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """PEFT's tensor names and layouts for our adapter tree (`lora.adapters`)."""
    modules, tensors = _modules(cfg), {}
    for name, ab in adapters["layers"].items():
        for i in range(cfg.num_layers):
            where = f"{PREFIX}model.layers.{i}.{modules[name]}"
            # a (*in, r) reads as a weight from `in` to r: lora_A (r, in); b (r, *out) one from r to `out`: lora_B (out, r)
            tensors[f"{where}.lora_A.weight"] = layer_to_hf(name, np.asarray(ab["a"][i]))
            tensors[f"{where}.lora_B.weight"] = layer_to_hf(name, np.asarray(ab["b"][i]))
    rows = adapters.get("rows", {})
    if "embed" in rows:
        tensors[f"{PREFIX}model.embed_tokens.{TOKEN_DELTA}"] = np.asarray(rows["embed"])
    if "lm_head" in rows:
        tensors[f"{PREFIX}lm_head.{TOKEN_DELTA}"] = np.ascontiguousarray(np.asarray(rows["lm_head"]).T)
    return tensors


def write(folder: Path, step: Path, *, tokenizer: ChatTokenizer | None, eot_id: int | None, dtype: str = "keep") -> Path:
    """Writes the PEFT folder of the LoRA step `step` (a resolved checkpoint) into `folder`; `dtype` casts
    the adapters (kept: float32, as trained)."""
    cfg = checkpoint.load_model_config(step)
    spec = LoraSpec.from_record(checkpoint.adapter_record(step)["spec"])
    tensors = adapter_tensors(checkpoint.load_adapters(step, cfg, spec), spec, cfg)
    if dtype != "keep":
        tensors = {name: t.astype(jnp.dtype(dtype)) for name, t in tensors.items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ADAPTER_WEIGHTS).write_bytes(save(tensors, metadata={"format": "pt"}))  # small; local or gs://
    (folder / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(spec, cfg), indent=2))
    (folder / hf_chat.GENERATION_CONFIG).write_text(json.dumps(hf_chat.generation_config(cfg, eot_id), indent=2))
    if tokenizer is not None:
        hf_chat.write_tokenizer(folder, tokenizer, eot_id, cfg)
    return folder
