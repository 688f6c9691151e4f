"""The loss over the vocabulary a slice of the sequence at a time: the same loss and gradient as the
cross-entropy of the whole logits, and a train step that never holds those logits whole."""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lima_jax import sharding
from lima_jax.config import model_config
from lima_jax.model import Llama
from lima_jax.train import loss
from lima_jax.train import optimizer as optim
from lima_jax.train.state import abstract_batch, abstract_state, jit_train_step
from support.training import small_config


def test_slice_length_is_the_longest_divisor_whose_logits_fit(monkeypatch):
    monkeypatch.setattr(loss, "SLICE_LOGITS", 1000)
    assert loss.slice_length(rows=2, length=64, vocab=10) == 32  # 2 x 64 x 10 = 1280 logits: halves fit
    assert loss.slice_length(rows=2, length=64, vocab=10, devices=2) == 64  # spread over 2 devices: whole
    assert loss.slice_length(rows=2, length=60, vocab=10) == 30
    assert loss.slice_length(rows=2, length=7, vocab=1000) == 1  # not even one token fits: one at a time


def test_sliced_loss_and_gradient_are_the_whole_logits_cross_entropys(tmp_path, monkeypatch):
    cfg = model_config(small_config(tmp_path, **{"model.residual_dropout": 0.0})).replace(vocab_size=512, vocab_padding=7)
    graphdef, params = nnx.split(Llama(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    tokens, targets = (jnp.asarray(rng.integers(0, 505, (4, 32)), jnp.int32) for _ in range(2))
    weights = jnp.asarray(rng.integers(0, 2, (4, 32)), jnp.int32)

    def whole(p):
        logits = nnx.merge(graphdef, p)(tokens)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)

    def sliced(p):
        model = nnx.merge(graphdef, p)
        return loss.cross_entropy_sum(model.logits, model.hidden(tokens), targets, weights, cfg.vocab_size)

    monkeypatch.setattr(loss, "SLICE_LOGITS", 4 * 8 * 512)  # slices of 8 tokens: 4 of them
    assert loss.slice_length(4, 32, 512) == 8
    (want, want_grad), (got, got_grad) = jax.value_and_grad(whole)(params), jax.value_and_grad(sliced)(params)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):  # the sums over tokens run in another order
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(b))))


def _vocab_products(jaxpr, vocab: int) -> int:
    """dot_generals with a `vocab`-long operand dimension, in `jaxpr` and every jaxpr nested in it."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general" and any(vocab in v.aval.shape for v in eqn.invars):
            count += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _vocab_products(sub, vocab)
    return count


def test_the_sliced_loss_gradient_runs_the_head_once_per_slice(tmp_path, monkeypatch):
    """Differentiated, each slice's head products are its logits and the two gradients (to the hidden
    states and to the head's weight), taken while the logits exist: no second forward of the head."""
    cfg = model_config(small_config(tmp_path, **{"model.residual_dropout": 0.0})).replace(vocab_size=512)
    graphdef, params = nnx.split(Llama(cfg, rngs=nnx.Rngs(0)))
    tokens = jnp.zeros((4, 32), jnp.int32)

    def sliced(p):
        model = nnx.merge(graphdef, p)
        return loss.cross_entropy_sum(model.logits, model.hidden(tokens), tokens, jnp.ones((4, 32)), cfg.vocab_size)

    monkeypatch.setattr(loss, "SLICE_LOGITS", 4 * 8 * 512)  # 4 slices, run by one scan body
    assert _vocab_products(jax.make_jaxpr(sliced)(params).jaxpr, 512) == 1
    assert _vocab_products(jax.make_jaxpr(jax.grad(sliced))(params).jaxpr, 512) == 3


def test_the_train_step_never_holds_the_whole_logits(tmp_path):
    """8 x 256 tokens of a 32,768-id vocabulary: 268 MB of float32 logits, for a model whose own arrays
    are a few MB. With the whole logits the step's temporaries were 628 MB (the logits, their softmax and
    gradient); sliced, 224 MB (those of one 64-token slice)."""
    config = small_config(tmp_path, **{"data.max_len": 256})
    cfg = model_config(config).replace(vocab_size=32768)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    opt = optim.make_optimizer(config.optim, 10)
    step = jit_train_step(config, cfg, opt, optim.learning_rate(config.optim, 10), mesh)
    compiled = step.lower(abstract_state(cfg, opt, mesh), abstract_batch(8, 256, mesh)).compile()
    logits_bytes = 8 * 256 * 32768 * 4
    assert compiled.memory_analysis().temp_size_in_bytes < logits_bytes
