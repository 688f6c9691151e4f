"""The training run: sharding and accumulation leave the numbers alone, the recipe's schedule,
exact resume after SIGTERM, restores across meshes, errors before compiling, and learning."""
import json
import os
import signal
import time

import jax
import numpy as np
import pytest
from flax import nnx

from lima_jax import sharding
from lima_jax.train import optimizer as optim
from lima_jax.train.checkpoints import RunCheckpoints
from lima_jax.weights import checkpoint
from lima_jax.config import load_config, model_config
from lima_jax.data import demo_dir
from lima_jax.data.batches import Batcher
from lima_jax.data.records import read_conversations
from lima_jax.data.tokenizer import ChatTokenizer
from lima_jax.errors import LimaError
from lima_jax.model import abstract_model
from lima_jax.train.state import abstract_state, init_state, jit_eval_step, jit_train_step
from lima_jax.train.step import token_losses
from lima_jax.train.loop import train
from support.commands import call_command, start_command
from support.training import data_dir, demo_records, on_data, read_metrics, small_config, train_args

def demo_examples(n, max_len):
    tok = ChatTokenizer(demo_dir() / "tokenizer.model")
    records, _ = read_conversations(demo_dir() / "train.jsonl")
    return tok, [tok.encode_conversation(r["conversations"], max_len=max_len) for r in records[:n]]


def _mesh(shape):
    n = int(np.prod(list(shape.values())))
    return sharding.make_mesh(shape, jax.devices()[:n])


def _one_step(config, mesh, batch):
    cfg = model_config(config).replace(vocab_size=513)
    opt = optim.make_optimizer(config.optim, 10)
    step = jit_train_step(config, cfg, opt, optim.learning_rate(config.optim, 10), mesh)
    state = init_state(cfg, opt, mesh, seed=0)
    state, metrics = step(state, {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()})
    return jax.device_get(metrics), state


def _demo_batch(rows=8, seq_len=64, pack=True):
    _, examples = demo_examples(16, seq_len + 1)
    batcher = Batcher([len(e[0]) for e in examples], lambda i: examples[i], batch_size=16, seq_len=seq_len,
                      num_epochs=1, seed=0, pack=pack, row_multiple=rows)
    return batcher.batch(0).arrays()


def _gradients(config, mesh, batch):
    """d(mean target-token loss)/d(params), computed on `mesh`."""
    cfg = model_config(config).replace(vocab_size=513)
    params = init_state(cfg, optim.make_optimizer(config.optim, 10), mesh, seed=0).params
    graphdef = nnx.graphdef(abstract_model(cfg))

    def mean_loss(p, b):
        with sharding.activation_mesh(mesh):
            total, count = token_losses(graphdef, p, b, None)
        return total / count

    sharded = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
    return jax.device_get(jax.jit(jax.grad(mean_loss))(params, sharded))


def test_loss_and_gradients_are_the_same_on_one_device_and_on_a_2x2x2_mesh(tmp_path):
    """About 20 s: the full training step compiled for two meshes (no smaller program checks the sharding rules)."""
    config = small_config(tmp_path, **{"model.residual_dropout": 0.0})
    batch = _demo_batch()
    one, eight = _mesh({"data": 1, "fsdp": 1, "tensor": 1}), _mesh({"data": 2, "fsdp": 2, "tensor": 2})
    m1, _ = _one_step(config, one, batch)
    m8, _ = _one_step(config, eight, batch)
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-5)
    g1, g8 = _gradients(config, one, batch), _gradients(config, eight, batch)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_gradient_accumulation_and_packing_leave_the_loss_unchanged(tmp_path):
    config = small_config(tmp_path, **{"model.residual_dropout": 0.0})
    mesh = _mesh({"data": 1, "fsdp": 2, "tensor": 1})
    whole, _ = _one_step(config, mesh, _demo_batch())
    config.grad_accum = 4
    accumulated, _ = _one_step(config, mesh, _demo_batch())
    assert accumulated["target_tokens"] == whole["target_tokens"]
    np.testing.assert_allclose(accumulated["loss"], whole["loss"], rtol=1e-6)
    np.testing.assert_allclose(accumulated["grad_norm"], whole["grad_norm"], rtol=1e-5)

    # The same 16 examples, packed several to a row or one per row.
    packed, unpacked = _demo_batch(rows=8, pack=True), _demo_batch(rows=16, pack=False)
    assert packed["tokens"].shape[0] < unpacked["tokens"].shape[0]
    cfg = model_config(config).replace(vocab_size=513)
    evaluate = jit_eval_step(cfg, mesh)
    params = init_state(cfg, optim.make_optimizer(config.optim, 10), mesh, seed=0).params
    a, b = evaluate(params, packed), evaluate(params, unpacked)
    assert float(a["count"]) == float(b["count"]) > 0
    np.testing.assert_allclose(float(a["loss_sum"]) / float(a["count"]), float(b["loss_sum"]) / float(b["count"]), rtol=1e-5)


def test_a_step_without_accumulation_lowers_to_no_accumulation_loop(tmp_path):
    # grad_accum=1 must not pay for a zeroed gradient buffer and a length-1 scan (a copy of every
    # gradient per step): with the layers unrolled, it lowers to one while loop fewer (threefry's
    # loops remain) than grad_accum=2.
    config = small_config(tmp_path, **{"model.scan_layers": False})
    cfg = model_config(config).replace(vocab_size=513)
    mesh = _mesh({"data": 1, "fsdp": 1, "tensor": 1})
    opt = optim.make_optimizer(config.optim, 10)
    step = jit_train_step(config, cfg, opt, optim.learning_rate(config.optim, 10), mesh)
    state = init_state(cfg, opt, mesh, seed=0)
    batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in _demo_batch().items()}
    assert config.grad_accum == 1
    loops = step.lower(state, batch).as_text().count("stablehlo.while")
    config.grad_accum = 2
    accumulating = jit_train_step(config, cfg, opt, optim.learning_rate(config.optim, 10), mesh)
    assert loops == accumulating.lower(state, batch).as_text().count("stablehlo.while") - 1


def test_learning_rate_is_1e5_at_step_0_and_1e6_at_the_last_step(tmp_path):
    data = data_dir(tmp_path / "data", demo_records()[:48])  # 6 steps
    config = on_data(tmp_path, data, **{"optim.lr": 1e-5, "optim.end_lr": 1e-6, "data.dev_size": 0})
    recipe = load_config("65b")
    assert (recipe.optim.lr, recipe.optim.end_lr, recipe.optim.b1, recipe.optim.b2, recipe.optim.weight_decay) == (1e-5, 1e-6, 0.9, 0.95, 0.1)
    assert (recipe.num_epochs, recipe.batch_size, recipe.model.residual_dropout, recipe.optim.grad_clip) == (15, 32, 0.3, 0.0)
    train(config)
    steps = [r for r in read_metrics(config.workdir) if "loss" in r]
    assert steps[0]["step"] == 1 and steps[0]["learning_rate"] == pytest.approx(1e-5, rel=1e-6)
    assert steps[-1]["learning_rate"] == pytest.approx(1e-6, rel=1e-6)
    lrs = [r["learning_rate"] for r in steps]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # linear decay, no warmup
    np.testing.assert_allclose(np.diff(lrs), np.diff(lrs)[0], rtol=1e-3)


def test_checkpoint_saved_on_8_devices_restores_on_1(small_run):
    config = small_config(small_run.parent)
    ckpts = RunCheckpoints(str(small_run))
    step = ckpts.latest_step()
    assert step is not None
    cfg = checkpoint.load_model_config(os.path.join(small_run, "checkpoints", str(step)))
    opt = optim.make_optimizer(config.optim, 10)
    saved = abstract_state(cfg, opt, _mesh({"data": 1, "fsdp": 8, "tensor": 1}))
    one = abstract_state(cfg, opt, _mesh({"data": 1, "fsdp": 1, "tensor": 1}))
    p8, _, run = ckpts.restore(step, saved.params, saved.opt_state)
    p1, o1, _ = ckpts.restore(step, one.params, one.opt_state)
    assert run["eot_id"] == 512
    assert len(p1["embed"].sharding.device_set) == 1 and len(p8["embed"].sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The sampler's loader reads the same step, from the run's workdir.
    _, params = checkpoint.load_params(str(small_run))
    np.testing.assert_array_equal(np.asarray(params["embed"]), np.asarray(p1["embed"]))


LEAN = {"model.param_dtype": "bfloat16", "optim.moments_dtype": "bfloat16"}  # bf16 weights, fp32 master copy


@pytest.mark.parametrize("data, lean", [pytest.param(200, {}, id="slice", marks=pytest.mark.slow),
                                        pytest.param(200, LEAN, id="lean"),
                                        pytest.param(None, {}, id="demo", marks=pytest.mark.slow)])
def test_sigterm_then_restart_ends_with_the_same_metrics(data, lean, tmp_path):
    """Two epochs, stopped mid-epoch 1 and resumed: 200 demo conversations (48 steps), the whole demo (200
    steps) in the slow tier; a lean full fine-tune resumes from its float32 master copy exactly too. The
    default tier runs the lean one (20-40 s: three runs of bfloat16 steps, which a CPU emulates); the plain
    slice is the slow tier's, as tests/storage/test_gcs.py stops and resumes the same run (in a bucket)."""
    overrides = {"num_epochs": 2, **lean}
    if data is not None:
        folder = data_dir(tmp_path / "data", demo_records()[:data])
        overrides |= {"data.manual_dir": str(folder), "data.tokenizer": str(demo_dir() / "tokenizer.model")}
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    train(small_config(tmp_path, workdir=str(tmp_path / "full"), **overrides))  # never stopped (in this process)
    expected = read_metrics(tmp_path / "full")

    cut = tmp_path / "cut"
    proc = start_command("train", *train_args(cut, *flags))
    deadline = time.time() + 240
    while time.time() < deadline:  # stop it once a few steps are logged, mid-epoch
        if (cut / "metrics.jsonl").exists() and len((cut / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert "preempted: saved step" in err
    interrupted = read_metrics(cut)
    assert len(interrupted) < len(expected)

    r = call_command("train", *train_args(cut, *flags))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed" in r.stderr
    resumed = read_metrics(cut)
    assert [r.get("step") for r in resumed] == [r.get("step") for r in expected]
    for got, want in zip(resumed, expected):
        for key in ("loss", "grad_norm", "learning_rate", "dev_loss"):
            if key in want:
                assert got[key] == want[key], (key, got, want)


def test_bad_records_stop_before_compiling_with_file_and_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = json.dumps({"conversations": ["Hi?", "Hello."], "source": "t"})
    (data / "train.jsonl").write_text("\n".join([good] * 20 + ['{"conversations": ["only a prompt", ""]}', good]) + "\n")
    config = small_config(tmp_path, **{"data.manual_dir": str(data), "data.tokenizer": str(demo_dir() / "tokenizer.model")})
    with pytest.raises(LimaError, match=r"train\.jsonl:21: turn 2 is empty"):
        train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()
    config.data.skip_invalid = True
    train(config)
    assert len([r for r in read_metrics(config.workdir) if "loss" in r]) >= 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mesh.data": 3}, "config key mesh: 3 does not divide the 8 devices|does not divide"),
        ({"batch_size": 12}, "config key batch_size: 12 does not divide over the data axes"),
        ({"data.train_on": "prompts"}, "config key data.train_on"),
        ({"init_checkpoint": "/nonexistent/ckpt"}, "checkpoint /nonexistent/ckpt: no such file"),
        ({"checkpoint.params_dtype": "int8"}, "config key checkpoint.params_dtype: 'int8' is not one of '', float32, bfloat16"),
        ({"optim.narrow_params": "kahan"}, "config key optim.narrow_params: must be master, stochastic or nearest"),
        ({"optim.moments_dtype": "int8"}, "config key optim.moments_dtype: must be float32, bfloat16 or empty"),
    ],
)
def test_bad_configs_fail_before_compiling(tmp_path, overrides, message):
    with pytest.raises(LimaError, match=message):
        train(small_config(tmp_path, **overrides))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_weight_decay_spares_norm_scales_and_attention_biases():
    from lima_jax.model import ModelConfig

    cfg = ModelConfig(vocab_size=16, dim=8, num_layers=2, num_heads=2, num_kv_heads=1, ffn_dim=16, qkv_bias=True, out_bias=True)
    mask = optim.decay_mask(nnx.to_pure_dict(nnx.state(abstract_model(cfg))))
    spared = sorted(k for k, decays in mask["layers"].items() if not decays)
    assert spared == ["attn_norm", "bk", "bo", "bq", "bv", "mlp_norm"]
    assert mask["embed"] and mask["lm_head"] and not mask["norm"] and mask["layers"]["wq"]
