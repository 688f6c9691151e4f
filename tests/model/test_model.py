"""The model against Hugging Face's LLaMA, and its own invariants: scan/remat, packing, dropout,
the KV cache, and compile time at 65B scale (abstract shapes only, nothing allocated)."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lima_jax.model.llama as model_lib
from lima_jax.model.decode_layout import for_decoding
from lima_jax.model import KVCache, Llama, ModelConfig, abstract_model, dropout_rates, model_from_params
from support.models import forward, random_model, random_params, random_tokens, tiny

ATOL = 1e-4


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


LLAMA31_ROPE = tiny(rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_len=32)
QWEN2 = tiny(family="qwen2", qkv_bias=True, tie_embeddings=True, norm_eps=1e-6, rope_theta=1000000.0)


def hf_reference():
    return pytest.importorskip("support.hf_reference")


def transformers_and_ours(cfg: ModelConfig, seed: int = 0):
    """A random transformers model of `cfg`'s family, ours with its weights, and tokens to compare on."""
    from lima_jax.weights.names import params_from_hf

    hf = hf_reference()
    reference = hf.random_hf_model(cfg, seed=seed)
    state = hf.hf_state(reference)
    model = model_from_params(cfg, params_from_hf(list(state), state.__getitem__, cfg, "test"))
    return reference, model, np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 11))


decode = nnx.jit(Llama.decode)


def ce_loss(graphdef, state, tokens, dropout_rng=None) -> jax.Array:
    """Next-token cross-entropy, functional style (what a train step differentiates)."""
    logits = nnx.merge(graphdef, state)(tokens, dropout_rng=dropout_rng)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def compile_seconds(cfg: ModelConfig, seq_len: int = 2048) -> float:
    """Wall time to lower and compile the forward pass from abstract shapes (no memory used)."""
    graphdef, abstract_state = nnx.split(abstract_model(cfg))

    def logits(state, tokens):
        return nnx.merge(graphdef, state)(tokens)

    start = time.perf_counter()
    jax.jit(logits).lower(abstract_state, jax.ShapeDtypeStruct((1, seq_len), jnp.int32)).compile()
    return time.perf_counter() - start


def assert_close(actual, expected, atol=ATOL):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=0, atol=atol)


def assert_differs(a, b, by=1e-3):
    assert float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b)))) > by


# ----------------------------------------------------------------------------------------------
# 1. Hugging Face parity
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        pytest.param(tiny(num_kv_heads=2), id="gqa"),
        pytest.param(tiny(num_kv_heads=4), id="mha"),
        pytest.param(tiny(num_kv_heads=1, tie_embeddings=True), id="mqa-tied"),
        pytest.param(tiny(num_kv_heads=4, tie_embeddings=True, head_dim=32, rope_theta=500000.0), id="mha-tied-headdim"),
        # Llama 3.1's rope scaling; an original context of 32 puts the 16-dim heads' wavelengths
        # (6 to 6e4 positions) in all three bands: kept, interpolated and divided by the factor.
        pytest.param(LLAMA31_ROPE, id="llama3.1-rope"),
        pytest.param(tiny(qkv_bias=True, out_bias=True), id="llama-attention-bias"),
        pytest.param(tiny(family="mistral", num_kv_heads=1), id="mistral"),
        pytest.param(QWEN2, id="qwen2"),
        pytest.param(tiny(num_heads=8, num_kv_heads=2, tie_embeddings=True, rope_theta=100000.0), id="smollm"),
    ],
)
def test_logits_match_transformers(cfg):
    reference, model, tokens = transformers_and_ours(cfg)
    expected = hf_reference().hf_logits(reference, tokens)
    actual = forward(model, jnp.asarray(tokens, jnp.int32))
    assert actual.dtype == jnp.float32
    assert float(np.std(expected)) > 0.1  # the comparison is not between near-constant logits
    assert_close(actual, expected)


def test_llama3_rope_scaling_changes_the_frequencies_it_should():
    """The scaled frequencies against Llama 3.1's rule, band by band, so a parity test that passed
    by accident (no dim in a band) would still be caught here."""
    plain = model_lib.rope_frequencies(LLAMA31_ROPE.replace(rope_scaling="none"))
    scaled = model_lib.rope_frequencies(LLAMA31_ROPE)
    wavelen = 2 * np.pi / plain
    high = wavelen < LLAMA31_ROPE.rope_original_max_len / LLAMA31_ROPE.rope_high_freq_factor
    low = wavelen > LLAMA31_ROPE.rope_original_max_len / LLAMA31_ROPE.rope_low_freq_factor
    assert high.any() and low.any() and (~high & ~low).any()
    np.testing.assert_array_equal(scaled[high], plain[high])
    np.testing.assert_allclose(scaled[low], plain[low] / LLAMA31_ROPE.rope_factor, rtol=1e-6)
    middle = ~high & ~low
    assert np.all(scaled[middle] < plain[middle]) and np.all(scaled[middle] > plain[middle] / LLAMA31_ROPE.rope_factor)


@pytest.mark.parametrize("cfg", [pytest.param(QWEN2, id="qwen2"), pytest.param(tiny(qkv_bias=True, out_bias=True), id="llama-attention-bias")])
def test_the_decoding_layout_keeps_the_attention_biases(cfg):
    """Fused q/k/v projections add the biases too: decoding matches transformers."""
    reference, model, tokens = transformers_and_ours(cfg)
    expected = hf_reference().hf_logits(reference, tokens)
    assert_close(forward(for_decoding(model), jnp.asarray(tokens, jnp.int32)), expected)


# ----------------------------------------------------------------------------------------------
# 2. Scan and remat change how the stack is computed, not what it computes
# ----------------------------------------------------------------------------------------------


def test_scanned_and_unscanned_stacks_agree():
    cfg = tiny(residual_dropout=0.3)
    params = random_params(cfg)
    scanned = model_from_params(cfg.replace(scan_layers=True), params)
    unrolled = model_from_params(cfg.replace(scan_layers=False), params)
    tokens = random_tokens(cfg, (2, 9))

    assert_close(forward(scanned, tokens), forward(unrolled, tokens), atol=1e-5)
    # The per-layer dropout keys are the same too.
    rng = jax.random.key(3)
    assert_close(forward(scanned, tokens, dropout_rng=rng), forward(unrolled, tokens, dropout_rng=rng), atol=1e-5)


@pytest.mark.parametrize("with_dropout", [False, True], ids=["no-dropout", "dropout"])
def test_remat_policies_give_the_same_gradient(with_dropout):
    """Rematerialisation recomputes activations (dropout masks included) in the backward pass; the
    gradient must not change."""
    cfg = tiny(residual_dropout=0.3)
    params = random_params(cfg)
    tokens = random_tokens(cfg, (2, 9))
    rng = jax.random.key(7) if with_dropout else None

    grads = {}
    for policy in model_lib.REMAT_POLICIES:
        graphdef, state = nnx.split(model_from_params(cfg.replace(remat=policy), params))
        grads[policy] = jax.jit(jax.grad(lambda s: ce_loss(graphdef, s, tokens, rng)))(state)

    reference = grads["none"]
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(reference)) > 1e-3
    for policy in model_lib.REMAT_POLICIES[1:]:
        jax.tree.map(lambda a, b: assert_close(a, b, atol=1e-5), grads[policy], reference)


def test_unknown_remat_policy_is_rejected():
    model = random_model(tiny(remat="sometimes"))
    with pytest.raises(ValueError, match="remat"):
        model(random_tokens(model.cfg, (1, 4)))


# ----------------------------------------------------------------------------------------------
# 3. Packing
# ----------------------------------------------------------------------------------------------


def test_packed_examples_match_each_example_alone():
    cfg = tiny()
    model = random_model(cfg)
    a = random_tokens(cfg, (1, 3), seed=11)
    b = random_tokens(cfg, (1, 2), seed=12)
    pad = jnp.zeros((1, 1), jnp.int32)

    packed = forward(
        model,
        jnp.concatenate([a, b, pad], axis=1),
        positions=jnp.array([[0, 1, 2, 0, 1, 0]], jnp.int32),
        segment_ids=jnp.array([[1, 1, 1, 2, 2, 0]], jnp.int32),
    )
    assert_close(packed[:, :3], forward(model, a))
    assert_close(packed[:, 3:5], forward(model, b))
    # Example b is not simply a continuation of a: packing without segments would differ.
    assert_differs(forward(model, jnp.concatenate([a, b], axis=1))[:, 3:5], forward(model, b))


# ----------------------------------------------------------------------------------------------
# 4. Residual dropout (LIMA: 0.0 at the bottom layer rising linearly to the top rate)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_layers, top", [(80, 0.3), (32, 0.2), (2, 0.5), (1, 0.3)])
def test_dropout_schedule_is_linear_from_zero_at_the_bottom(num_layers, top):
    rates = dropout_rates(num_layers, top)
    assert rates.shape == (num_layers,)
    np.testing.assert_allclose(rates, np.linspace(0.0, top, num_layers), atol=1e-7)
    assert rates[0] == 0.0
    if num_layers > 1:
        assert rates[-1] == pytest.approx(top)
        assert np.all(np.diff(rates) > 0)


def test_dropout_schedule_lima_values():
    assert dropout_rates(80, 0.3)[79] == pytest.approx(0.3)
    assert dropout_rates(80, 0.3)[0] == 0.0
    assert dropout_rates(80, 0.3)[40] == pytest.approx(0.3 * 40 / 79)
    assert dropout_rates(32, 0.2)[31] == pytest.approx(0.2)
    assert dropout_rates(32, 0.2)[0] == 0.0


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_residual_dropout_is_inverted_dropout_at_the_given_rate(rate):
    x = jnp.ones((1000, 1000), jnp.float32)
    y = model_lib.residual_dropout(x, jnp.float32(rate), jax.random.key(0))
    zero_fraction = float(jnp.mean(y == 0))
    assert zero_fraction == pytest.approx(rate, abs=0.005)
    assert float(jnp.mean(y)) == pytest.approx(1.0, abs=0.01)
    kept = np.asarray(y)[np.asarray(y) != 0]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - rate), rtol=1e-6)


def test_residual_dropout_is_identity_without_a_key_or_at_rate_zero():
    x = jax.random.normal(jax.random.key(1), (64, 64))
    assert_close(model_lib.residual_dropout(x, jnp.float32(0.5), None), x, atol=0)
    assert_close(model_lib.residual_dropout(x, jnp.float32(0.0), jax.random.key(0)), x, atol=0)


def test_forward_without_rng_is_deterministic_and_ignores_the_rate():
    cfg = tiny(residual_dropout=0.3)
    params = random_params(cfg)
    model = model_from_params(cfg, params)
    no_dropout = model_from_params(cfg.replace(residual_dropout=0.0), params)
    tokens = random_tokens(cfg, (2, 8))

    first = forward(model, tokens)
    assert_close(forward(model, tokens), first, atol=0)
    assert_close(first, forward(no_dropout, tokens), atol=0)


def test_residual_dropout_is_transformers_llama_with_each_residual_branch_s_output_dropped():
    """LIMA: "dropout over residual connections" (Ouyang et al.), as OPT and fairseq/metaseq place it: on the
    attention's and the MLP's outputs before they join the residual stream, never on the stream itself nor
    on the attention probabilities. transformers' LLaMA with exactly that added (forward hooks on each
    layer's self_attn and mlp, applying the masks our forward draws) gives our logits."""
    torch = pytest.importorskip("torch")
    cfg = tiny(residual_dropout=0.3)
    reference, model, tokens = transformers_and_ours(cfg)
    rng = jax.random.key(7)
    rates = dropout_rates(cfg.num_layers, cfg.residual_dropout)
    shape = (*tokens.shape, cfg.dim)
    hooks = []
    for i, key in enumerate(jax.random.split(rng, cfg.num_layers)):  # the keys and masks of `Llama.__call__`
        keep = jnp.float32(1.0) - jnp.asarray(rates[i])
        for module, branch_key in zip((reference.model.layers[i].self_attn, reference.model.layers[i].mlp),
                                      jax.random.split(key)):
            scale = torch.from_numpy(np.asarray(jax.random.bernoulli(branch_key, keep, shape)) / np.float32(keep))

            def drop(_, __, out, scale=scale):
                return (out[0] * scale, *out[1:]) if isinstance(out, tuple) else out * scale

            hooks.append(module.register_forward_hook(drop))
    try:
        expected = hf_reference().hf_logits(reference, tokens)
    finally:
        for h in hooks:
            h.remove()
    actual = forward(model, jnp.asarray(tokens, jnp.int32), dropout_rng=rng)
    assert_differs(actual, forward(model, jnp.asarray(tokens, jnp.int32)), by=0.05)  # the masks matter here
    assert_close(actual, expected)


def test_dropout_rng_changes_the_logits():
    cfg = tiny(residual_dropout=0.3)
    model = random_model(cfg)
    tokens = random_tokens(cfg, (2, 8))

    plain = forward(model, tokens)
    one = forward(model, tokens, dropout_rng=jax.random.key(1))
    assert_differs(one, plain)
    assert_differs(forward(model, tokens, dropout_rng=jax.random.key(2)), one)
    assert_close(forward(model, tokens, dropout_rng=jax.random.key(1)), one, atol=0)  # same key, same mask


def test_single_layer_model_has_no_dropout():
    """With one layer the schedule is [0.0]: the only layer is the bottom one."""
    cfg = tiny(num_layers=1, residual_dropout=0.5)
    model = random_model(cfg)
    tokens = random_tokens(cfg, (2, 8))
    assert_close(forward(model, tokens, dropout_rng=jax.random.key(1)), forward(model, tokens), atol=0)


@pytest.mark.parametrize("top, changes", [(0.5, True), (0.0, False)])
def test_two_layer_model_drops_only_in_its_top_layer(top, changes):
    cfg = tiny(num_layers=2, residual_dropout=top)
    model = random_model(cfg)
    tokens = random_tokens(cfg, (2, 8))
    dropped, plain = forward(model, tokens, dropout_rng=jax.random.key(1)), forward(model, tokens)
    if changes:
        assert_differs(dropped, plain)
    else:
        assert_close(dropped, plain, atol=0)


def test_each_layer_drops_both_residual_branches_at_its_scheduled_rate(monkeypatch):
    """Records the rate every residual_dropout call receives (unrolled, so rates are concrete)."""
    cfg = tiny(num_layers=4, residual_dropout=0.3, scan_layers=False)
    model = random_model(cfg)
    seen = []
    original = model_lib.residual_dropout

    def recording(x, rate, key):
        seen.append((float(rate), key is not None))
        return original(x, rate, key)

    monkeypatch.setattr(model_lib, "residual_dropout", recording)
    model(random_tokens(cfg, (1, 5)), dropout_rng=jax.random.key(0))
    expected = [(r, True) for r in (0.0, 0.1, 0.2, 0.3) for _branch in ("attn", "mlp")]
    assert seen == [(pytest.approx(r), k) for r, k in expected]


# ----------------------------------------------------------------------------------------------
# 5. KV-cache decoding
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "unrolled"])
def test_cached_decoding_matches_the_full_forward(scan_layers):
    cfg = tiny(scan_layers=scan_layers)
    model = random_model(cfg)
    prompt_len, total, max_len = 5, 10, 16
    tokens = random_tokens(cfg, (2, total))
    full = forward(model, tokens)

    cache = KVCache.zeros(cfg, batch=2, max_len=max_len)
    positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (2, prompt_len))
    logits, cache = decode(model, tokens[:, :prompt_len], positions, jnp.ones((2, prompt_len), jnp.int32), cache)
    assert_close(logits, full[:, :prompt_len])
    for t in range(prompt_len, total):
        step = jnp.full((2, 1), t, jnp.int32)
        logits, cache = decode(model, tokens[:, t : t + 1], step, jnp.ones((2, 1), jnp.int32), cache)
        assert_close(logits[:, 0], full[:, t])
    assert int(cache.index) == total


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
def test_the_decoding_layout_gives_the_same_logits_and_cache(fuse):
    """`for_decoding` (per-layer arrays, optionally fused projections) changes where weights live,
    never what they compute."""
    cfg = tiny()
    stacked = random_model(cfg)
    unstacked = for_decoding(random_model(cfg), fuse_projections=fuse)
    assert isinstance(unstacked.layers, nnx.List) and len(unstacked.layers) == cfg.num_layers
    layer = unstacked.layers[1]
    np.testing.assert_array_equal(layer.w_down[...], stacked.layers.w_down[...][1])
    if fuse:
        assert not hasattr(layer, "wq") and not hasattr(layer, "w_up")
        qkv_width = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.resolved_head_dim
        assert layer.wqkv[...].shape == (cfg.dim, qkv_width) and layer.w_gate_up[...].shape == (cfg.dim, 2 * cfg.ffn_dim)
    else:
        assert layer.wq[...].shape == stacked.layers.wq[...].shape[1:]
    tokens = random_tokens(cfg, (2, 7))
    assert_close(forward(unstacked, tokens), forward(stacked, tokens))
    positions = jnp.broadcast_to(jnp.arange(7, dtype=jnp.int32), (2, 7))
    segments = jnp.ones((2, 7), jnp.int32)
    ours, cache = decode(unstacked, tokens, positions, segments, KVCache.zeros(cfg, 2, 9))
    theirs, reference = decode(stacked, tokens, positions, segments, KVCache.zeros(cfg, 2, 9))
    assert_close(ours, theirs)
    for a, b in zip(cache.k + cache.v, reference.k + reference.v):
        assert_close(a, b)
    assert for_decoding(unstacked) is unstacked  # laying it out twice is a no-op
    assert_close(forward(unstacked, tokens), forward(stacked, tokens))


def test_scanned_decoding_gives_the_same_logits_and_cache_as_unrolled():
    """`decode_scan` runs the same layers under one lax.scan over a stacked (L, ...) cache."""
    cfg = tiny(num_layers=3)
    scanned_cfg = cfg.replace(decode_scan=True)
    params = random_params(cfg)
    unrolled, scanned = model_from_params(cfg, params), model_from_params(scanned_cfg, params)
    assert for_decoding(scanned) is scanned  # it decodes from the stacked layers
    ours, theirs = KVCache.zeros(scanned_cfg, 2, 9), KVCache.zeros(cfg, 2, 9)
    assert ours.k.shape == (3, *theirs.k[0].shape) and ours.v.shape == (3, *theirs.v[0].shape) and ours.max_len == 9
    tokens = random_tokens(cfg, (2, 8))
    for start, stop in ((0, 5), (5, 6), (6, 7)):  # a prompt, then single steps
        positions = jnp.broadcast_to(jnp.arange(start, stop, dtype=jnp.int32), (2, stop - start))
        segments = jnp.ones((2, stop - start), jnp.int32)
        scanned_logits, ours = decode(scanned, tokens[:, start:stop], positions, segments, ours)
        unrolled_logits, theirs = decode(unrolled, tokens[:, start:stop], positions, segments, theirs)
        assert_close(scanned_logits, unrolled_logits)
    for i in range(cfg.num_layers):
        assert_close(ours.k[i], theirs.k[i])
        assert_close(ours.v[i], theirs.v[i])
    assert int(ours.index) == int(theirs.index) == 7


def test_a_batch_of_one_decodes_like_the_full_forward():
    cfg = tiny()
    model = random_model(cfg)
    tokens = random_tokens(cfg, (1, 6))
    full = forward(model, tokens)
    cache = KVCache.zeros(cfg, 1, 8)
    assert cache.k[0].shape == (1, cfg.num_kv_heads, 8, cfg.resolved_head_dim) and cache.max_len == 8
    assert cache.v[0].shape == (1, cfg.num_kv_heads, cfg.resolved_head_dim, 8)
    logits, cache = decode(model, tokens[:, :4], jnp.arange(4)[None], jnp.ones((1, 4), jnp.int32), cache)
    assert_close(logits, full[:, :4])
    for t in (4, 5):
        logits, cache = decode(model, tokens[:, t : t + 1], jnp.full((1, 1), t), jnp.ones((1, 1), jnp.int32), cache)
        assert_close(logits[:, 0], full[:, t])


def test_left_padded_batch_matches_each_prompt_alone():
    """Row 0 is a 4-token prompt behind 2 padding slots (segment 0, positions start at its first
    real token); row 1 is a 6-token prompt. Prefill, then decode one more token per row."""
    cfg = tiny()
    model = random_model(cfg)
    short = random_tokens(cfg, (1, 4), seed=21)
    long = random_tokens(cfg, (1, 6), seed=22)
    nxt = random_tokens(cfg, (2, 1), seed=23)

    tokens = jnp.concatenate([jnp.concatenate([jnp.zeros((1, 2), jnp.int32), short], axis=1), long], axis=0)
    positions = jnp.array([[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]], jnp.int32)
    segments = jnp.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], jnp.int32)
    logits, cache = decode(model, tokens, positions, segments, KVCache.zeros(cfg, 2, 8))
    assert_close(logits[0, -1], forward(model, short)[0, -1])
    assert_close(logits[0, 2:], forward(model, short)[0])
    assert_close(logits[1, -1], forward(model, long)[0, -1])

    logits, _ = decode(model, nxt, jnp.array([[4], [6]], jnp.int32), jnp.ones((2, 1), jnp.int32), cache)
    assert_close(logits[0, 0], forward(model, jnp.concatenate([short, nxt[:1]], axis=1))[0, -1])
    assert_close(logits[1, 0], forward(model, jnp.concatenate([long, nxt[1:]], axis=1))[0, -1])


# ----------------------------------------------------------------------------------------------
# 6. Compile time at 65B scale (abstract shapes: nothing is allocated)
# ----------------------------------------------------------------------------------------------

LLAMA_65B = ModelConfig(
    vocab_size=32000,
    dim=8192,
    ffn_dim=22016,
    num_layers=80,
    num_heads=64,
    num_kv_heads=64,
    max_len=2048,
    dtype="bfloat16",
    param_dtype="float32",
    residual_dropout=0.3,
)


def test_65b_forward_compiles_quickly_on_cpu(no_compilation_cache):
    seconds = compile_seconds(LLAMA_65B)
    assert seconds < 60.0, f"65B forward took {seconds:.1f}s to compile"


def test_compile_time_does_not_grow_with_depth(no_compilation_cache):
    """The layers run under lax.scan, so 80 layers compile about as fast as 8."""
    compile_seconds(LLAMA_65B.replace(num_layers=2))  # warm up the compiler's one-time costs
    shallow = min(compile_seconds(LLAMA_65B.replace(num_layers=8)) for _ in range(2))
    deep = min(compile_seconds(LLAMA_65B.replace(num_layers=80)) for _ in range(2))
    assert deep < 2.0 * shallow, f"80 layers: {deep:.2f}s, 8 layers: {shallow:.2f}s"


def test_vocabulary_padding_changes_no_logit_and_no_loss():
    """97 real ids padded to 128 rows: the real ids' logits are the unpadded model's, the padding
    ids' are PADDING_LOGIT, and the cross-entropy (and its gradient) is the unpadded one's."""
    import optax

    cfg = tiny()
    padded_cfg = cfg.replace(vocab_size=128, vocab_padding=31)
    params = random_params(cfg)
    padded = dict(params)
    rng = np.random.default_rng(5)  # large padding weights: unmasked, they would dominate
    padded["embed"] = np.concatenate([params["embed"], 10 * rng.standard_normal((31, cfg.dim), np.float32)])
    padded["lm_head"] = np.concatenate([params["lm_head"], 10 * rng.standard_normal((cfg.dim, 31), np.float32)], axis=1)
    tokens = random_tokens(cfg, (2, 9))
    ours, theirs = forward(random_model(cfg), tokens), forward(model_from_params(padded_cfg, padded), tokens)
    np.testing.assert_array_equal(theirs[..., :97], ours)
    assert np.all(np.asarray(theirs[..., 97:]) == model_lib.PADDING_LOGIT)

    def loss(c, p):
        logits = model_from_params(c, p)(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

    value_and_grad = jax.jit(jax.value_and_grad(loss, 1), static_argnums=0)
    (l1, g1), (l2, g2) = value_and_grad(cfg, params), value_and_grad(padded_cfg, padded)
    np.testing.assert_allclose(l2, l1, rtol=1e-6)
    np.testing.assert_allclose(g2["lm_head"][:, :97], g1["lm_head"], atol=1e-6)
    assert not np.asarray(g2["lm_head"][:, 97:]).any() and np.isfinite(l2)
