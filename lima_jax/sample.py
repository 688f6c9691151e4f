"""A first sampler, for debugging: prefill the prompt into a KV cache, then decode token by token.

    python -m lima_jax.sample --checkpoint=CKPT --prompt_ids=1,2,3 --temperature=0 \
        --max_new_tokens=20 --print_ids

`--checkpoint` takes a converted checkpoint, one saved step, or a run's workdir (its latest
complete step). Temperature 0 is greedy; a sequence stops at the model's EOS token.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from lima_jax import checkpoint
from lima_jax.cli import run
from lima_jax.errors import LimaError
from lima_jax.model import KVCache, Llama, model_from_params

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a checkpoint, a step directory, or a run's workdir")
_PROMPT_IDS = flags.DEFINE_string("prompt_ids", None, "the prompt as comma-separated token ids, e.g. 1,2,3")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 samples greedily")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "how many tokens to generate at most")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed (unused when greedy)")
_PRINT_IDS = flags.DEFINE_bool("print_ids", False, "print the generated token ids, space-separated, one line")


def generate(
    model: Llama,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    seed: int = 0,
    stop_ids: tuple[int, ...] = (),
) -> list[int]:
    """The tokens generated after `prompt` (the stop token included, when one ends it)."""
    if not prompt:
        raise LimaError("the prompt is empty: give at least one token id")
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, tokens, positions, cache, key):
        logits, cache = nnx.merge(graphdef, state).decode(tokens, positions, jnp.ones_like(tokens), cache)
        last = logits[:, -1]
        if temperature == 0.0:
            return jnp.argmax(last, axis=-1), cache
        return jax.random.categorical(key, last / temperature, axis=-1), cache

    cache = KVCache.zeros(model.cfg, batch=1, max_len=len(prompt) + max_new_tokens)
    tokens = jnp.asarray([prompt], jnp.int32)
    positions = jnp.arange(len(prompt), dtype=jnp.int32)[None]
    key = jax.random.key(seed)
    out: list[int] = []
    for i in range(max_new_tokens):
        key, sub = jax.random.split(key)
        next_token, cache = step(state, tokens, positions, cache, sub)
        out.append(int(next_token[0]))
        if out[-1] in stop_ids:
            break
        tokens = next_token[:, None].astype(jnp.int32)
        positions = jnp.full((1, 1), len(prompt) + i, jnp.int32)
    return out


def parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise LimaError(f"--prompt_ids: {text!r} is not a comma-separated list of token ids") from None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise LimaError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _CHECKPOINT.value:
        raise LimaError("--checkpoint is required")
    if _PROMPT_IDS.value is None:
        raise LimaError("--prompt_ids is required (text prompts come with the full sampler)")
    if _TEMPERATURE.value < 0:
        raise LimaError(f"--temperature must be >= 0, got {_TEMPERATURE.value}")
    prompt = parse_ids(_PROMPT_IDS.value)
    cfg, params = checkpoint.load_params(_CHECKPOINT.value)
    bad = [t for t in prompt if not 0 <= t < cfg.vocab_size]
    if bad:
        raise LimaError(f"--prompt_ids: token id {bad[0]} is outside the vocabulary (0..{cfg.vocab_size - 1})")
    model = model_from_params(cfg, params)
    ids = generate(
        model, prompt, _MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value, seed=_SEED.value, stop_ids=(cfg.eos_id,)
    )
    if _PRINT_IDS.value:
        print(" ".join(map(str, ids)))
        return
    tokenizer = checkpoint.tokenizer_path(_CHECKPOINT.value)
    if tokenizer is None:
        print(" ".join(map(str, ids)))
        return
    import sentencepiece as spm

    print(spm.SentencePieceProcessor(model_file=str(tokenizer)).decode(ids))


if __name__ == "__main__":
    run(main)
