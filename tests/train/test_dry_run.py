"""`python -m lima_jax.train --dry_run --topology=...`: the real job checked and compiled for a TPU
slice on this CPU host, writing nothing (needs libtpu, like the AOT tests)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
from support.paths import LLAMA_TOKENIZER, require
from support.markers import needs_libtpu

from flax import nnx

from lima_jax.data import demo_dir
from lima_jax.model import ModelConfig, abstract_model
from lima_jax.weights import checkpoint

pytestmark = needs_libtpu


def _dry_run(cwd, *args):
    r = subprocess.run([sys.executable, "-m", "lima_jax.train", "--dry_run", *args], cwd=cwd, capture_output=True, text=True)
    report = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode in (0, 1) and r.stdout.strip() else None
    return r, report


def _everything_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, dirs, files in os.walk(path) for f in files + dirs)


def test_compiles_the_step_the_data_gives_and_writes_nothing(tmp_path):
    before = _everything_under(tmp_path)
    r, report = _dry_run(tmp_path, "--config=tiny", "--topology=v4-8", "--config.workdir=runs/tiny")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _everything_under(tmp_path) == before  # no workdir, no TFDS cache, no config.json
    # The trained vocabulary (512 pieces + EOT, padded to 640) and the data's packed rows: 16
    # demo conversations per step pack into 8 rows of 128 tokens.
    assert (report["vocab_size"], report["vocab_padding"]) == (640, 127)
    assert report["tokenizer"] == str(demo_dir() / "tokenizer.model")
    assert report["batch"] == [8, 128] and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert report["dry_run"]["train_examples"] == 771 and report["dry_run"]["steps"] == 722
    assert report["fits"] is True and report["remat"] == "none" and report["grad_accum"] == 1


def test_bad_data_is_named_by_file_and_line_before_compiling(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"conversations": ["Hi?", "Hello."]}) + "\n" + '{"conversations": ["Hi?", ""]}\n')
    r, _ = _dry_run(tmp_path, "--config=tiny", "--topology=v4-8", f"--config.data.manual_dir={tmp_path}",
                    f"--config.data.tokenizer={demo_dir() / 'tokenizer.model'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'train.jsonl'}:2: turn 2 is empty"


def test_an_init_checkpoint_of_the_wrong_shape_is_named_without_loading_it(tmp_path):
    cfg = ModelConfig(vocab_size=512, dim=64, num_layers=5, num_heads=8, num_kv_heads=4, ffn_dim=172, norm_eps=1e-5)
    params = _zeros(cfg)
    params["norm"] = np.zeros((63,), np.float32)  # the config says 64
    wrong = checkpoint.save(tmp_path / "ckpt", params, cfg)
    r, _ = _dry_run(tmp_path, "--config=tiny", "--topology=v4-8", f"--config.init_checkpoint={wrong}",
                    f"--config.data.tokenizer={demo_dir() / 'tokenizer.model'}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == f"error: checkpoint {wrong}: tensor norm has shape (63,), the model config says (64,)"


def test_a_workdir_holding_another_run_is_refused(tmp_path):
    (tmp_path / "run" / "checkpoints" / "10").mkdir(parents=True)  # a run that saved a step
    (tmp_path / "run" / "config.json").write_text(json.dumps({"name": "tiny", "seed": 7}))
    r, _ = _dry_run(tmp_path, "--config=tiny", "--topology=v4-8", f"--config.workdir={tmp_path / 'run'}")
    assert r.returncode == 2
    assert "holds a run with a different config" in r.stderr.strip().splitlines()[-1]


def test_needs_a_topology(tmp_path):
    r, _ = _dry_run(tmp_path, "--config=tiny")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "error: --dry_run needs --topology (a TPU slice such as v4-128)"


def test_lima_65b_with_llama_s_tokenizer_fits_v4_128(tmp_path):
    """The paper's job as a pod would run it: LLaMA's 32,000 pieces + EOT padded to 32,128 rows, which
    shard over the tensor axis, batch 32 x 2048 over 16 hosts. About 45 s: libtpu compiles the 65B step."""
    tokenizer = require(LLAMA_TOKENIZER)
    r, report = _dry_run(tmp_path, "--config=65b", "--topology=v4-128", f"--config.data.tokenizer={tokenizer}",
                         "--config.workdir=runs/65b")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (report["vocab_size"], report["vocab_padding"], report["chips"]) == (32128, 127, 64)
    assert report["dry_run"]["hosts"] == 16 and report["batch"] == [32, 2048]
    assert report["fits"] and report["per_chip_bytes"]["total"] <= 32 * 2**30
    # What tests/train/test_aot.py's test_lima_65b_recipe_fits_v4_128 (the slow tier) checks of the same step
    # through `lima_jax.aot`: the recipe's defaults, the vocabulary sharded over tensor=2, 65B parameters.
    assert (report["remat"], report["attention"], report["grad_accum"], report["mesh"]["tensor"]) == ("save_attention", "splash", 1, 2)
    assert 65.2e9 < report["params"] < 65.3e9 + 2 * 128 * 8192  # + the EOT and padding rows
    assert "not sharded" not in r.stderr  # every parameter shards: nothing silently replicated
    assert not (tmp_path / "runs").exists()


def _zeros(cfg):
    return jax.tree.map(lambda a: np.zeros(a.shape, np.float32), nnx.to_pure_dict(nnx.state(abstract_model(cfg))))
