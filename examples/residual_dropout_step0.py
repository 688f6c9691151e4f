"""Step-0 loss with and without LIMA's residual dropout, on a pretrained model and on a random one.

    python examples/residual_dropout_step0.py

stories260K (the tiny config's shapes, pretrained; shipped in examples/) is scored on 16 x 128 tokens it
samples itself, without dropout and with top-layer rates 0.1, 0.2 and 0.3 (the mean, min and max over 5
masks); a random model of SmolLM-135M's shape (30 layers, 576 wide) on random tokens for contrast.
"""
import pathlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lima_jax.inference.sampler import SamplingParams, generate
from lima_jax.model import Llama, ModelConfig, model_from_params
from lima_jax.storage.paths import Path
from lima_jax.weights.convert import read_weights

STORIES = pathlib.Path(__file__).resolve().parent / "stories260k" / "stories260K.bin"


def losses(cfg: ModelConfig, params: dict, tokens: jax.Array, mask: jax.Array) -> dict[float, tuple[float, ...]]:
    out = {}
    for top in (0.0, 0.1, 0.2, 0.3):
        model = model_from_params(cfg.replace(residual_dropout=top), params)
        logits_of = nnx.jit(lambda m, t, r: m(t, dropout_rng=r))
        values = []
        for seed in range(5 if top else 1):
            logp = jax.nn.log_softmax(logits_of(model, tokens, jax.random.key(seed) if top else None)[:, :-1], axis=-1)
            nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
            values.append(float(jnp.sum(nll * mask) / jnp.sum(mask)))
        out[top] = tuple(round(v, 3) for v in (statistics.mean(values), min(values), max(values)))
    return out


def main() -> None:
    cfg, params = read_weights(Path(STORIES), "llama2c", None)
    samples = generate(model_from_params(cfg, params), [[cfg.bos_id]] * 16,
                       SamplingParams(temperature=1.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=127),
                       stop_ids=[cfg.eos_id], seed=0)
    tokens, mask = np.zeros((16, 128), np.int32), np.zeros((16, 127), np.float32)
    for i, sample in enumerate(samples):  # each row's own text; past its end nothing is scored
        row = ([cfg.bos_id] + sample)[:128]
        tokens[i, : len(row)], mask[i, : len(row) - 1] = row, 1
    print("stories260K, its own samples:", losses(cfg, params, jnp.asarray(tokens), jnp.asarray(mask)))
    big = ModelConfig(vocab_size=49152, dim=576, num_layers=30, num_heads=9, num_kv_heads=3, ffn_dim=1536,
                      tie_embeddings=True)
    random_params = nnx.to_pure_dict(nnx.state(Llama(big, rngs=nnx.Rngs(0))))
    tokens = jax.random.randint(jax.random.key(1), (4, 128), 0, big.vocab_size)
    print("random 30 x 576, random tokens:", losses(big, random_params, tokens, jnp.ones((4, 127))))


if __name__ == "__main__":
    main()
