"""The prefill in chunks (issue 23: one pass over 16 prompts of 8,192 tokens needed about 48 GB of
attention scores per layer): each chunk attends to the cache the chunks before it wrote, and the
result is the one pass's, for left-padded rows of different lengths."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lima_jax.inference import sampler
from lima_jax.model import Llama, ModelConfig


def test_a_prompt_prefilled_in_chunks_gives_the_whole_forward_s_last_logits_and_keys(monkeypatch):
    cfg = ModelConfig(vocab_size=64, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64, max_len=128)
    model = Llama(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 64, n).tolist() for n in (70, 33, 1)]  # 70 = 6 + 2 chunks of 32, with padding rows
    tokens, positions, segments = sampler._left_padded(prompts, 70, 3)
    keys = jax.random.split(jax.random.key(0), 3)
    stop = jnp.asarray([2])

    def prefill(chunk: int):
        monkeypatch.setattr(sampler, "PREFILL_CHUNK", chunk)
        return jax.jit(lambda *a: sampler._prefill(model, *a, stop, keys, 8))(tokens, positions, segments)

    whole, chunked = prefill(512), prefill(32)
    for i, p in enumerate(prompts):  # each row alone, unpadded: its last position's logits
        alone = model(jnp.asarray([p]))[0, -1]
        np.testing.assert_allclose(chunked.logits[i], alone, atol=2e-5)
    np.testing.assert_allclose(chunked.logits, whole.logits, atol=2e-5)
    for a, b in zip(jax.tree.leaves(chunked.cache), jax.tree.leaves(whole.cache)):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_the_prefill_s_memory_grows_with_the_chunk_not_with_the_prompt(monkeypatch):
    """Compiled only: 4 prompts of 2,048 tokens, in one pass and in chunks of 512."""
    cfg = ModelConfig(vocab_size=512, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64, max_len=4096)
    model = Llama(cfg, rngs=nnx.Rngs(0))
    shape = jax.ShapeDtypeStruct((4, 2048), jnp.int32)
    keys = jax.random.split(jax.random.key(0), 4)

    def temp_bytes(chunk: int) -> int:
        monkeypatch.setattr(sampler, "PREFILL_CHUNK", chunk)
        run = jax.jit(lambda *a: sampler._prefill(model, *a, jnp.asarray([2]), keys, 16))
        return run.lower(shape, shape, shape).compile().memory_analysis().temp_size_in_bytes

    whole, chunked = temp_bytes(2048), temp_bytes(512)
    scores = 4 * 4 * 2048 * (2048 + 16) * 4  # one layer's fp32 scores in one pass: 271 MB
    assert whole > scores and chunked < whole / 3, (whole, chunked)
