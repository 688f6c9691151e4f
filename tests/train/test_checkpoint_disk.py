"""Disk per checkpoint: only the latest step keeps what a resume needs besides the parameters (the
optimizer state: twice the parameters again under AdamW); every other step keeps the parameters, which
is all that checkpoint selection, sampling and serving read."""
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from support.commands import run_command
from support.models import tiny
from support.training import checkpoint_steps, two_step_config

from lima_jax import sharding
from lima_jax.config import load_config
from lima_jax.data import demo_dir
from lima_jax.evaluate.epochs import epoch_checkpoints
from lima_jax.model import abstract_model
from lima_jax.train.checkpoints import RunCheckpoints
from lima_jax.train import optimizer as optim
from lima_jax.train.loop import train
from lima_jax.train.state import fresh_optimizer_state
from lima_jax.weights import checkpoint
from lima_jax.weights.checkpoint import model_record

CFG = tiny()


def state(step: int):
    """Params and an AdamW-like state (a count and two moments per parameter) that differ at every step."""
    rng = np.random.default_rng(step)
    params = {"w": jnp.asarray(rng.standard_normal((256, 256)), jnp.float32), "b": jnp.full((256,), step, jnp.float32)}
    return params, (jnp.asarray(step, jnp.int32), jax.tree.map(lambda a: a * 0.5, params), jax.tree.map(jnp.square, params))


def abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def equal(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def with_optimizer_state(folder) -> list[str]:
    return sorted((p for p in os.listdir(folder) if (folder / p / "opt_state").exists()), key=int)


@pytest.mark.parametrize("async_save", [False, True])
def test_only_the_latest_step_keeps_the_optimizer_state(tmp_path, async_save):
    """Every step kept params and AdamW's two moments: 3x the parameters' bytes per epoch checkpoint."""
    ckpts = RunCheckpoints(tmp_path, async_save=async_save)
    for step in (1, 2, 3):
        ckpts.save(step, *state(step), CFG, {"epoch": step})
    ckpts.close()
    assert with_optimizer_state(tmp_path / "checkpoints") == ["3"]
    params, opt_state = state(3)
    ckpts = RunCheckpoints(tmp_path)
    step, got_params, got_opt_state = ckpts.restore_latest(abstract(params), abstract(opt_state))
    assert step == 3 and equal(got_params, params) and equal(got_opt_state, opt_state)
    old_params, no_opt_state, run = ckpts.restore(1, abstract(params), abstract(opt_state))
    assert equal(old_params, state(1)[0]) and no_opt_state is None and run == {"epoch": 1}


def test_a_kill_before_or_during_the_drop_leaves_the_newest_step_to_resume_and_the_drop_is_finished_later(tmp_path, capfd):
    """What a kill leaves: steps 2 and 3 whole (killed after step 3 was written, before step 2's optimizer
    state was dropped), step 1's optimizer state half deleted (killed while it was dropped)."""
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        for step in (1, 2, 3):
            params, opt_state = state(step)
            manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                model=ocp.args.JsonSave(model_record(CFG)), run=ocp.args.JsonSave({"epoch": step})))
    (tmp_path / "checkpoints" / "1" / "opt_state" / "_METADATA").unlink()  # the drop's first deletion
    params, opt_state = state(3)
    ckpts = RunCheckpoints(tmp_path)
    step, got_params, got_opt_state = ckpts.restore_latest(abstract(params), abstract(opt_state))
    assert step == 3 and equal(got_params, params) and equal(got_opt_state, opt_state)
    assert ckpts.restore(1, abstract(params), abstract(opt_state))[1] is None  # absent, not damaged
    ckpts.save(4, *state(4), CFG, {"epoch": 4})
    ckpts.close()
    assert with_optimizer_state(tmp_path / "checkpoints") == ["4"]
    assert "warning" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """The tiny model, two epochs of two steps: epoch checkpoints at steps 2 and 4, a save at every step
    (about 20 s on 2 cores, once for the module: compiling the train and eval steps)."""
    config = two_step_config(tmp_path_factory.mktemp("two_epochs"), num_epochs=2,
                             **{"checkpoint.every_steps": 1, "data.tokenizer": str(demo_dir() / "tokenizer.model")})
    train(config)
    return pathlib.Path(config.workdir)


def size(folder) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def test_a_run_keeps_the_optimizer_state_in_its_last_step_only(two_epochs):
    steps = two_epochs / "checkpoints"
    assert checkpoint_steps(two_epochs) == [1, 2, 3, 4]
    assert with_optimizer_state(steps) == ["4"]
    assert size(steps / "2") < size(steps / "4") / 2  # params only, against params and two AdamW moments


def test_selection_and_sample_read_an_epoch_step_without_optimizer_state(two_epochs):
    rows = epoch_checkpoints(two_epochs)
    assert [r["step"] for r in rows] == [2, 4]
    old = rows[0]["checkpoint"]
    _, params = checkpoint.load_params(old)
    restored, no_opt_state, _ = RunCheckpoints(two_epochs).restore(2, abstract(params), abstract(params))
    assert no_opt_state is None and equal(params, restored)  # the run's own reader agrees with the weights reader
    assert not equal(params, checkpoint.load_params(rows[1]["checkpoint"])[1])
    r = run_command("sample", f"--checkpoint={old}", "--prompt_ids=1,2,3", "--temperature=0", "--max_new_tokens=4",
                    "--print_ids")
    assert r.returncode == 0, r.stderr[-2000:]
    ids = r.stdout.split()
    assert 1 <= len(ids) <= 4 and all(i.isdigit() for i in ids), r.stdout


def test_a_fresh_optimizer_state_continues_the_learning_rate_schedule():
    """A resume from a step without optimizer state (the latest set aside) would start the schedule over at
    `optim.lr`; it must stand where the run is (here its last step: `optim.end_lr`), with Adam's moments fresh."""
    config = load_config("tiny")
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    optimizer = optim.make_optimizer(config.optim, 100)
    params = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), nnx.to_pure_dict(nnx.state(abstract_model(CFG))))
    fresh = fresh_optimizer_state(params, optimizer, CFG, mesh, 99)
    updates, _ = jax.jit(optimizer.update)(jax.tree.map(jnp.ones_like, params), fresh, params)
    # Adam's first update is grad / |grad| = 1 per element; the norm scales have no weight decay.
    np.testing.assert_allclose(np.asarray(updates["norm"]), -config.optim.end_lr, rtol=1e-6)


def test_params_dtype_bfloat16_halves_each_step_and_the_latest_still_resumes_exactly(tmp_path):
    ckpts = RunCheckpoints(tmp_path, params_dtype="bfloat16")
    for step in (1, 2):
        ckpts.save(step, *state(step), CFG, {"epoch": step})
    ckpts.close()
    steps = tmp_path / "checkpoints"
    assert set(jax.tree.leaves(checkpoint.stored_dtypes(steps / "1"))) == {np.dtype(jnp.bfloat16)}
    params, opt_state = state(2)
    step, got_params, got_opt_state = RunCheckpoints(tmp_path).restore_latest(abstract(params), abstract(opt_state))
    assert step == 2 and equal(got_params, params) and equal(got_opt_state, opt_state)  # fp32, exact
    old = RunCheckpoints(tmp_path).restore(1, abstract(params), abstract(opt_state))
    assert old[1] is None and equal(old[0], jax.tree.map(lambda a: a.astype(jnp.bfloat16).astype(a.dtype), state(1)[0]))
    assert size(steps / "1" / "params") < 0.6 * size(steps / "2" / "train_params")
