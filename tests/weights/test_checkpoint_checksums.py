"""A model checkpoint's arrays carry checksums: a damaged tensor file is one line naming the checkpoint,
never wrong weights; a checkpoint saved before the checksums still loads."""
import os
import re

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from support.commands import call_command
from support.models import flip_bytes, random_params, tiny

from lima_jax.errors import LimaError
from lima_jax.weights import checkpoint, checksums

CFG = tiny()


def incompressible_params(cfg, seed=0):
    """Random bits as finite float32 weights: zstd stores them raw, so flipped bytes read back as other
    values, unnoticed by the decompressor (as 4 KiB did in real weights; where it notices, the file is
    unreadable, a case of its own)."""
    rng = np.random.default_rng(seed)

    def bits(a):
        words = rng.integers(0, 2**32, a.shape, dtype=np.uint32)
        words[(words & 0x7F800000) == 0x7F800000] ^= 0x00800000  # no inf or NaN
        return words.view(np.float32)

    return jax.tree.map(bits, random_params(cfg))


@pytest.fixture
def saved(tmp_path):
    return checkpoint.save(tmp_path / "ckpt", incompressible_params(CFG), CFG)


def test_flipped_bytes_in_a_tensor_file_are_one_line_naming_the_checkpoint_and_the_tensor(saved):
    """4 KiB of flipped bytes used to load as wrong weights: `sample` answered (empty) with exit 0."""
    flip_bytes(saved / "params")
    with pytest.raises(LimaError, match=rf"^checkpoint {re.escape(str(saved))}: tensor [\w.]+ does not match the checksum "
                                        "saved with it: its file is damaged$"):
        checkpoint.load_params(saved)
    r = call_command("sample", f"--checkpoint={saved}", "--prompt_ids=1,2,3", "--max_new_tokens=2")
    assert r.returncode == 2 and r.stdout == "", r.stderr[-2000:]
    assert re.fullmatch(rf"error: checkpoint {re.escape(str(saved))}: tensor [\w.]+ does not match .*\n", r.stderr), r.stderr[-2000:]


def test_a_truncated_tensor_file_is_one_line_in_sample_naming_the_checkpoint_and_the_cause(saved):
    """It used to be 61 lines: Orbax's message with TensorStore's whole spec."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(saved / "params") for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    r = call_command("sample", f"--checkpoint={saved}", "--prompt_ids=1,2,3", "--max_new_tokens=2")
    assert r.returncode == 2 and r.stdout == "", r.stderr[-2000:]
    assert re.fullmatch(rf"error: checkpoint {re.escape(str(saved))}: cannot read its parameters "
                        r"\(OUT_OF_RANGE: Error reading [^\n]*\)\n", r.stderr), r.stderr[-3000:]


def test_a_checkpoint_saved_before_checksums_loads_unchanged(tmp_path):
    params = random_params(CFG)
    path = tmp_path / "old"
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:  # the layout written before the checksums
        ckptr.save(path, ocp.args.Composite(params=ocp.args.StandardSave(params),
                                            model=ocp.args.JsonSave(checkpoint.model_record(CFG))))
    _, back = checkpoint.load_params(path)
    assert jax.tree.all(jax.tree.map(np.array_equal, back, params))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_checkpoint_read_in_another_dtype_is_checked_against_its_stored_bits(tmp_path, dtype):
    """Read wider (bf16 stored, fp32 wanted) or narrower (fp32 stored, bf16 wanted): checked either way."""
    params = jax.tree.map(lambda a: a.astype(dtype), incompressible_params(CFG))
    path = checkpoint.save(tmp_path / "ckpt", params, CFG)
    wanted = "bfloat16" if dtype == "float32" else "float32"
    _, back = checkpoint.load_params(path, CFG.replace(param_dtype=wanted))
    assert {str(a.dtype) for a in jax.tree.leaves(back)} == {wanted}
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b).astype(wanted)), back, params))
    flip_bytes(path / "params")
    with pytest.raises(LimaError, match="does not match the checksum saved with it"):
        checkpoint.load_params(path, CFG.replace(param_dtype=wanted))


def test_the_checksum_is_the_same_on_the_host_and_on_devices_for_any_sharding_and_sees_one_flipped_bit():
    """Numpy sums what is in host memory; a jitted reduction what is on accelerators (run here on CPU devices)."""
    rng = np.random.default_rng(0)
    tree = {
        "f32": rng.standard_normal((8, 6, 4)).astype(np.float32),
        "bf16": rng.standard_normal((16, 8)).astype(ml_dtypes.bfloat16),
        "i32": rng.integers(-2**31, 2**31 - 1, (8, 4), dtype=np.int32),
        "u8": rng.integers(0, 255, (8,), dtype=np.uint8),
        "flag": np.array([True, False, True, True, False, False, True, False]),
        "count": np.int32(7),
        "long": rng.integers(0, 255, (2**20 + 8,), dtype=np.uint8),  # past one block of the host's sum
    }
    on_host = checksums.of(tree)
    assert checksums.of(jax.tree.map(jax.numpy.asarray, tree)) == on_host
    assert on_host["bf16"][0] == "bfloat16" and on_host["count"][0] == "int32"
    mesh = jax.make_mesh((4, 2), ("a", "b"))
    for placed in (jax.tree.map(jax.numpy.asarray, tree),
                   {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*["a", "b"][:np.ndim(v)])))
                    for k, v in tree.items()}):
        sums = checksums._device_sums(list(placed.values()), tuple(on_host[k][0] for k in placed))
        assert dict(zip(placed, map(int, sums))) == {k: v[1] for k, v in on_host.items()}
    for name, a in tree.items():  # one bit of one element, anywhere
        changed = a.copy().reshape(-1)
        changed.view(np.uint8)[changed.nbytes // 2 + 1] ^= 0x01
        assert checksums.of({name: changed.reshape(np.shape(a))})[name] != on_host[name], name
