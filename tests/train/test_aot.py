"""AOT compilation for TPU slices on this CPU host (needs the libtpu package)."""
import importlib.util
import json
import subprocess
import sys

import pytest

from lima_jax.train.aot import parse_topology
from support.commands import run_command
from lima_jax.errors import LimaError

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (pip install libtpu): it compiles for TPU topologies"
)


def test_slice_names_count_tensorcores():
    assert parse_topology("v4-8") == ("v4", "v4:2x2x1", 4)
    assert parse_topology("v4-128") == ("v4", "v4:4x4x4", 64)
    assert parse_topology("v5p-256") == ("v5p", "v5p:4x4x8", 128)
    assert parse_topology("v5litepod-16") == ("v5litepod", "v5e:4x4", 16)
    with pytest.raises(LimaError, match="no standard v4 slice has 3 chips"):
        parse_topology("v4-6")
    with pytest.raises(LimaError, match="expected GENERATION-COUNT"):
        parse_topology("tpu-big")


def _aot(*args):
    r = subprocess.run([sys.executable, "-m", "lima_jax.aot", *args], capture_output=True, text=True)
    report = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None
    return r, report


@needs_libtpu
def test_tiny_compiles_for_a_v5p_slice_with_consistent_memory_figures():
    r, report = _aot("--config=tiny", "--topology=v5p-8", "--config.batch_size=8", "--config.data.max_len=128")
    assert r.returncode == 0, r.stderr[-2000:]
    b = report["per_chip_bytes"]
    assert report["chips"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert b["total"] >= b["argument"] + b["temp"] > 0 and report["fits"] is True
    assert report["cost_analysis"]["flops"] > 0 and report["compile_s"] > 0


@pytest.mark.slow
@needs_libtpu
def test_lima_65b_recipe_fits_v4_128():
    """The paper's 65B step (batch 32 x 2048, AdamW states, fp32 params) with the config's defaults. The
    same step compiles in tests/train/test_dry_run.py's 65B test, which checks all of this too in the
    default tier; here it runs through `lima_jax.aot` (45 s of libtpu compiling, once is enough per tier)."""
    r, report = _aot("--config=65b", "--topology=v4-128")
    assert r.returncode == 0, r.stderr[-2000:]
    assert report["batch"] == [32, 2048] and report["chips"] == 64
    # The vocabulary training builds: LLaMA's 32,000 pieces + EOT, padded to shard over tensor=2.
    assert (report["vocab_size"], report["vocab_padding"], report["mesh"]["tensor"]) == (32128, 127, 2)
    assert (report["remat"], report["attention"], report["grad_accum"]) == ("save_attention", "splash", 1)
    assert "not sharded" not in r.stderr
    assert report["fits"] and report["per_chip_bytes"]["total"] <= 32 * 2**30
    assert 65.2e9 < report["params"] < 65.3e9 + 2 * 128 * 8192  # + the EOT and padding rows


@needs_libtpu
def test_a_step_that_does_not_fit_exits_1():
    r, report = _aot("--config=7b", "--topology=v4-8", "--config.model.remat=full")
    assert r.returncode == 1
    assert report["fits"] is False and "RESOURCE_EXHAUSTED" in report["error"]
    assert r.stderr.strip().splitlines()[-1].startswith("error: 7b does not fit v4-8")


@needs_libtpu
def test_a_compilation_cache_is_left_alone_by_a_compile_for_tpu(tmp_path):
    """A step compiled for a TPU topology was written to JAX's persistent cache, which a compile-only client
    cannot read back: the next compile warned "Error reading persistent compilation cache entry"."""
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache")}
    for _ in range(2):
        r = run_command("aot", "--config=tiny", "--topology=v5p-8", "--config.batch_size=8", "--config.data.max_len=128", env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "persistent compilation cache" not in r.stderr, r.stderr[-2000:]
    cache = tmp_path / "cache"
    assert not cache.exists() or not list(cache.iterdir())


@needs_libtpu
def test_auto_config_compiles_the_vocabulary_of_the_tokenizer_training_reads(tmp_path):
    """`--config=auto` with no data.tokenizer trains with the init checkpoint's tokenizer (train.vocab.tokenizer_for),
    not with the checkpoint's row count: here a base padded to 700 rows over the demo tokenizer's 512 pieces.
    aot compiled 700 + EOT padded to 768 rows; training builds 512 + EOT padded to 640. About 22 s: the compile
    every test here pays (17 s) and a base converted from transformers."""
    from support.hf_reference import random_hf_model

    from lima_jax.config import load_config, model_config
    from lima_jax.data import demo_dir
    from lima_jax.weights.convert import convert

    random_hf_model(model_config(load_config("tiny")).replace(vocab_size=700)).save_pretrained(tmp_path / "hf")
    ckpt = convert(tmp_path / "hf", tmp_path / "ckpt", tokenizer=demo_dir() / "tokenizer.model")
    r, report = _aot("--config=auto", f"--config.init_checkpoint={ckpt}", "--topology=v5p-8", "--config.batch_size=8",
                     "--config.data.max_len=128")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "vocabulary 700" in r.stderr  # auto read the checkpoint's rows as its model.vocab_size
    assert (report["vocab_size"], report["vocab_padding"]) == (640, 127)
    assert report["tokenizer"] == str(ckpt / "tokenizer.model")
