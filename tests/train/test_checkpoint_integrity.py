"""A run's checkpoints: a damaged step is set aside like an unreadable one, a step saved before the
checksums still resumes, and a failed save names the step that failed and what is known to be whole."""
import contextlib
import os
import re
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from support.models import flip_bytes, tiny

from lima_jax.errors import RunFailure
from lima_jax.train.checkpoints import RunCheckpoints
from lima_jax.weights.checkpoint import model_record

CFG = tiny()


def state(step: int, size: int = 128):
    """Params and an optimizer state (a count and a moment per parameter) that differ at every step. `w` is
    random bits, which zstd stores raw: flipped bytes there read back as other values, unnoticed."""
    rng = np.random.default_rng(step)
    params = {"w": jnp.asarray(rng.integers(-2**31, 2**31 - 1, (size, size), dtype=np.int32)), "b": jnp.full((size,), step, jnp.bfloat16)}
    return params, (jnp.asarray(step, jnp.int32), jax.tree.map(jnp.zeros_like, params))


def abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def save(ckpts: RunCheckpoints, step: int, size: int = 128) -> None:
    ckpts.save(step, *state(step, size), CFG, {"epoch": 0.5})


def test_a_step_with_flipped_bytes_is_set_aside_and_the_step_before_is_restored(tmp_path, capfd):
    """A bit-rotted step used to be restored as is (the next step went NaN), and chosen again on every rerun."""
    ckpts = RunCheckpoints(tmp_path)
    for step in (1, 2):
        save(ckpts, step)
    ckpts.close()
    flip_bytes(tmp_path / "checkpoints" / "2" / "params")
    params, opt_state = state(2)
    ckpts = RunCheckpoints(tmp_path)
    step, got_params, got_opt_state = ckpts.restore_latest(abstract(params), abstract(opt_state))
    assert step == 1
    assert jax.tree.all(jax.tree.map(np.array_equal, got_params, state(1)[0]))
    assert got_opt_state is None  # only the latest step (2) kept one: the run says so and starts fresh moments
    err = capfd.readouterr().err
    assert re.search(r"warning: checkpoint step 2 cannot be read \(params: tensor \w+ does not match the checksum saved "
                     r"with it: its file is damaged\); moved .*/checkpoints/2 to 2\.unreadable-", err), err[-2000:]
    assert sorted(p.split(".")[0] for p in os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    assert RunCheckpoints(tmp_path).latest_step() == 1


def test_a_step_saved_before_the_checksums_resumes(tmp_path):
    params, opt_state = state(3)
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:  # the items written before the checksums
        manager.save(3, args=ocp.args.Composite(params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                                                model=ocp.args.JsonSave(model_record(CFG)), run=ocp.args.JsonSave({})))
    step, got_params, got_opt_state = RunCheckpoints(tmp_path).restore_latest(abstract(params), abstract(opt_state))
    assert step == 3 and jax.tree.all(jax.tree.map(np.array_equal, (got_params, got_opt_state), (params, opt_state)))


@contextlib.contextmanager
def tmpfs(folder, size: str):
    """A tmpfs of `size` mounted at `folder` for the block (skips the test where mounting needs rights it lacks)."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here: needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_save_that_fails_in_the_background_is_named_when_the_next_save_meets_it(tmp_path):
    """The failure of step 2 (found when step 3 is saved) used to be reported as step 3's, claiming the
    steps before it whole: step 2 itself was not."""
    with tmpfs(tmp_path / "disk", "2m") as disk:
        ckpts = RunCheckpoints(disk)
        save(ckpts, 1, size=64)
        ckpts.wait()
        save(ckpts, 2, size=1024)  # 4 MiB of random bits: written in the background, onto a 2 MiB disk
        with pytest.raises(RunFailure) as e:
            save(ckpts, 3, size=64)
        assert str(e.value) == (f"saving checkpoint step 2 in {disk / 'checkpoints'} failed: No space left on device; "
                                "the last complete step is 1: fix the cause and rerun the same command to resume from it")
        ckpts.close()  # the failure is already told: closing raises nothing more
        assert sorted(p for p in os.listdir(disk / "checkpoints") if p.isdigit()) == ["1"]


def test_a_save_failing_in_a_write_of_python_s_own_is_named_as_tensorstore_s_are(tmp_path):
    """Which write meets a full disk first decides whether TensorStore ("... [os_error_code=28]") or
    Python ("[Errno 28] ...") raises: the line names the OS's reason either way (the test above once
    got Python's form). /dev/full fails every write with ENOSPC."""
    ckpts = RunCheckpoints(tmp_path)
    with pytest.raises(RunFailure) as e, ckpts._saving(2):
        with open("/dev/full", "w") as f:
            f.write("x")
    assert str(e.value) == (f"saving checkpoint step 2 in {tmp_path / 'checkpoints'} failed: No space left on device; "
                            "no step is complete: fix the cause and rerun the same command to start over")
