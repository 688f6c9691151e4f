"""A loaded checkpoint ready to answer conversations: weights laid out for decoding, its tokenizer,
its stop tokens; and the small parsers the sampling commands share.

`Generator(path)` takes a converted checkpoint, one saved step, or a run's workdir (its latest
complete step). Text prompts use LIMA's chat format (BOS, each utterance followed by EOT) when the
model was fine-tuned with EOT, the chat template saved with a converted instruct model (with a
generation prompt; it stops at the template's end of turn), and plain text after BOS for a base model.

`dtype` "bfloat16" holds the weights and the KV cache in bf16 (half of float32's bytes) and computes
in it, while norms, the attention softmax, the logits and sampling stay float32 (`lima_jax.model`);
"float32" holds and computes everything in float32; "auto" does as the checkpoint's config says.
"""
from __future__ import annotations

import jax

from lima_jax import sharding
from lima_jax.errors import LimaError
from lima_jax.log import say
from lima_jax.data.tokenizer import of_model
from lima_jax.model.decode_layout import for_decoding
from lima_jax.inference.sampler import SamplingParams, generate, past_context
from lima_jax.model import ModelConfig
from lima_jax.model import Llama, model_from_params, param_shardings
from lima_jax.weights import checkpoint


class Generator:
    """A loaded checkpoint with its tokenizer and stop tokens, ready to answer conversations."""

    def __init__(self, path: str, mesh: jax.sharding.Mesh | None = None, dtype: str = "auto"):
        path = checkpoint.resolve(path)  # once: a run's newer step appearing meanwhile is not mixed in
        self.path = path  # the step directory read: what a cache of this model's outputs names
        cfg = in_dtype(checkpoint.load_model_config(path), dtype)
        shardings = param_shardings(cfg, mesh) if mesh is not None else None
        cfg, params = checkpoint.load_params(path, cfg, shardings)
        self.mesh = mesh
        self.model: Llama = for_decoding(model_from_params(cfg, params), fuse_projections=mesh is None)
        del params
        tokenizer_file = checkpoint.tokenizer_path(path)
        run = checkpoint.run_info(path)
        self.tokenizer, eot = of_model(tokenizer_file, cfg.used_vocab_size, run) if tokenizer_file else (None, run.get("eot_id"))
        self.eot_id: int | None = eot
        if self.tokenizer is not None and self.tokenizer.template is not None and not run:
            say(f"using the chat template saved with {path}; answers stop at {self.tokenizer.token(eot)}")
        self.stop_ids = tuple(t for t in (eot, cfg.eos_id) if t is not None)
        self.trained_len: int | None = run.get("max_len")  # None: not trained here

    def encode(self, turns: list[str]) -> list[int]:
        if self.tokenizer is None:
            raise LimaError("this checkpoint has no tokenizer: use --prompt_ids, or convert with --tokenizer")
        if self.eot_id is None:  # a base model: plain text, no chat format
            return self.tokenizer.encode_plain("\n\n".join(turns))
        return self.tokenizer.encode_prompt(turns)

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return self.tokenizer.decode(ids)

    def __call__(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> list[list[int]]:
        for p in prompts:  # the sampler refuses these too; here the line can quote the prompt
            if past_context(len(p), self.model.cfg.max_len):
                raise LimaError(past_context(len(p), self.model.cfg.max_len, f"the prompt {self.quote(p)}"))
        self._warn_if_longer_than_trained(prompts)
        return generate(self.model, prompts, params, stop_ids=self.stop_ids, seed=seed, mesh=self.mesh)

    def quote(self, prompt: list[int], width: int = 40) -> str:
        """The start of a prompt's text, on one line, to name it in a message."""
        text = " ".join(self.decode(prompt).split())
        return repr(text[:width] + ("..." if len(text) > width else ""))

    def _warn_if_longer_than_trained(self, prompts: list[list[int]]) -> None:
        """RoPE positions past the trained length were never seen: the answer may degrade, silently."""
        long = [len(p) for p in prompts if self.trained_len and len(p) > self.trained_len]
        if long:
            say(f"warning: {len(long)} of {len(prompts)} prompts are longer than the {self.trained_len} tokens "
                f"{self.path} was trained on (the longest has {max(long)}); answers to them may degrade")


DTYPES = ("auto", "float32", "bfloat16")  # "auto": the checkpoint's own


def in_dtype(cfg: ModelConfig, dtype: str) -> ModelConfig:
    """`cfg` holding its weights (and so its KV cache) and computing in `dtype` (one of DTYPES)."""
    if dtype not in DTYPES:
        raise LimaError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return cfg if dtype == "auto" else cfg.replace(dtype=dtype, param_dtype=dtype)


def parse_mesh(text: str) -> jax.sharding.Mesh | None:
    """`fsdp=4,tensor=2` -> a mesh over every process's devices (this host's when it runs alone);
    empty -> None (one device, in one process)."""
    if not text.strip():
        if jax.process_count() > 1:
            raise LimaError(f"--mesh is required with {jax.process_count()} processes: the model is laid out over "
                            "all their devices (e.g. --mesh=fsdp=-1)")
        return None
    sizes = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        name = name.strip()
        if name not in sharding.MESH_AXES or not size.strip().lstrip("-").isdigit():
            raise LimaError(f"--mesh: {part!r} is not AXIS=SIZE with AXIS one of {', '.join(sharding.MESH_AXES)}")
        sizes[name] = int(size)
    if -1 not in sizes.values() and "data" not in sizes:
        sizes["data"] = -1  # the devices the named axes leave
    return sharding.make_mesh(sizes, jax.devices())


def parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise LimaError(f"--prompt_ids: {text!r} is not a comma-separated list of token ids") from None


def prompt_turns(conversation: list[str]) -> list[str]:
    """The turns up to the last user message: a conversation with an answer loses the answer."""
    return conversation if len(conversation) % 2 == 1 else conversation[:-1]
