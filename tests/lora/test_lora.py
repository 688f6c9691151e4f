"""LoRA and QLoRA runs (issue 24): adapters on a frozen base train, resume exactly, and read back as the
merged model wherever a full step is read."""
import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import openai
import pytest
from flax import nnx
from support.commands import run_command
from support.serving import start_server, stop_server, wait_until_healthy
from support.training import checkpoint_steps, data_dir, demo_records, kill_9_after, read_metrics, train_args

from lima_jax import sharding
from lima_jax.config import load_config
from lima_jax.train.vocab import trained_model_config
from lima_jax.data import demo_dir
from lima_jax.errors import LimaError
from lima_jax.lora import adapters, base as lora_base
from lima_jax.lora.spec import from_config
from lima_jax.model import abstract_model
from lima_jax.train.init_weights import load_pretrained
from lima_jax.weights import checkpoint

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 16)), jnp.int32)


def lora_overrides(base, **more):
    return {"init_checkpoint": str(base), "data.tokenizer": str(demo_dir() / "tokenizer.model"), "lora.rank": 4, **more}


def _logits(cfg, params):
    """The model on TOKENS, as the train step builds it (a tree holding LoRA-adapted weights included)."""
    graphdef = nnx.graphdef(abstract_model(cfg))
    return np.asarray(jax.jit(lambda p: nnx.merge(graphdef, p)(TOKENS))(params))


@pytest.mark.parametrize("base_dtype", ["", "nf4"])
def test_step_zero_is_the_base_and_the_merged_weights_are_what_the_adapters_apply(pretrained, tmp_path, base_dtype):
    config = load_config("tiny", {"workdir": str(tmp_path), **lora_overrides(pretrained, **{"lora.base_dtype": base_dtype})})
    cfg = trained_model_config(config, 512)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    params, kept = load_pretrained(config, cfg, mesh, keep_dtype=True)
    spec = dataclasses.replace(from_config(config), rows=(kept, cfg.used_vocab_size))
    frozen = lora_base.frozen(params, base_dtype)
    fresh = adapters.init(cfg, spec, jax.random.key(0), frozen)
    merged = adapters.merge(fresh, frozen, spec)
    # b = 0: step 0 is the base (as the run holds it), through the adapted model and the merged one alike.
    np.testing.assert_allclose(_logits(cfg, adapters.wear(fresh, frozen, spec)), _logits(cfg, merged), atol=1e-5)
    if not base_dtype:
        np.testing.assert_array_equal(merged["layers"]["wq"], params["layers"]["wq"])
    # A trained adapter: x W + s (x a) b in training is x (W + s a b) merged, EOT rows included.
    keys = iter(jax.random.split(jax.random.key(1), 64))
    trained = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(next(keys), a.shape), fresh)
    worn, merged = _logits(cfg, adapters.wear(trained, frozen, spec)), _logits(cfg, adapters.merge(trained, frozen, spec))
    assert np.abs(worn - _logits(cfg, adapters.merge(fresh, frozen, spec))).max() > 0.1  # the adapters do change it
    np.testing.assert_allclose(worn, merged, atol=1e-4)


def test_a_lora_run_trains_the_adapters_only_and_reads_back_as_the_merged_model(pretrained, lora_run, small_run):
    losses = [r["loss"] for r in read_metrics(lora_run) if "loss" in r]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.5  # it learns: a random base, the demo's format
    step = checkpoint.resolve(lora_run)
    info = checkpoint.adapter_record(step)
    assert info["base_fingerprint"] == checkpoint.fingerprint(pretrained)  # the base is untouched
    assert info["spec"]["rows"] == [512, 513]  # LIMA's new EOT row trains with the adapters

    def params_bytes(step):
        return sum(f.stat().st_size for f in pathlib.Path(step, "params").rglob("*") if f.is_file())

    full = params_bytes(checkpoint.resolve(small_run))
    assert params_bytes(step) < full / 3, (params_bytes(step), full)

    cfg, merged = checkpoint.load_params(lora_run)
    _, base = checkpoint.load_params(pretrained)
    assert merged["embed"].shape == (640, 64) and cfg.used_vocab_size == 513
    assert not np.allclose(merged["layers"]["w_down"], base["layers"]["w_down"], atol=1e-6)
    np.testing.assert_array_equal(merged["layers"]["attn_norm"], base["layers"]["attn_norm"])  # not a target
    np.testing.assert_array_equal(merged["embed"][:512], base["embed"])  # only the added row trains


def test_a_lora_step_whose_base_is_gone_or_changed_is_refused_in_one_line(lora_run, small_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(lora_run, copy)
    record = checkpoint.resolve(copy) / "lora" / "metadata"
    info = json.loads(record.read_text())
    record.write_text(json.dumps(dict(info, base=str(tmp_path / "gone"))))
    with pytest.raises(LimaError, match=r"its base checkpoint .*gone is missing"):
        checkpoint.load_params(copy)
    record.write_text(json.dumps(dict(info, base=str(small_run))))
    with pytest.raises(LimaError, match=r"now holds other weights \(fingerprint \w+, the adapters were trained on \w+\)"):
        checkpoint.load_params(copy)


def test_lora_config_errors_name_the_key(pretrained, tmp_path):
    def spec(**overrides):
        return from_config(load_config("tiny", {"workdir": str(tmp_path), **overrides}))

    assert spec() is None  # rank 0: a full fine-tune
    with pytest.raises(LimaError, match="config key lora.rank: LoRA adapts a pretrained base"):
        spec(**{"lora.rank": 8})
    with pytest.raises(LimaError, match="config key lora.targets: qkv is not a comma list"):
        spec(**lora_overrides(pretrained, **{"lora.targets": "q,qkv"}))
    with pytest.raises(LimaError, match="config key lora.base_dtype: 'int4'"):
        spec(**lora_overrides(pretrained, **{"lora.base_dtype": "int4"}))
    assert spec(**lora_overrides(pretrained, **{"lora.targets": "down, q"})).targets == ("q", "down")


def test_sample_and_serve_take_a_lora_run_as_they_take_a_full_one(lora_run, tmp_path):
    """The server (its own process, warming up) and `sample` greedy on the same run give the same answer."""
    with open(tmp_path / "server.log", "w+") as log:
        server, url = start_server(lora_run, log, "--max_len=96", "--batch_sizes=1", "--chunk_steps=4")
        try:
            sampled = run_command("sample", f"--checkpoint={lora_run}", "--prompt=Hello", "--max_new_tokens=8",
                                  "--temperature=0")
            assert sampled.returncode == 0, sampled.stderr[-2000:]
            wait_until_healthy(server, url, log)
            client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
            answer = client.chat.completions.create(model="run", messages=[{"role": "user", "content": "Hello"}],
                                                    max_tokens=8, temperature=0)
        finally:
            stop_server(server)
    assert answer.choices[0].message.content == sampled.stdout.strip() != ""


@pytest.mark.slow
@pytest.mark.parametrize("base_dtype", ["", "nf4"], ids=["lora", "qlora"])
def test_a_killed_lora_run_resumes_to_the_uninterrupted_losses_and_samples(pretrained, tmp_path, base_dtype):
    """Two LoRA runs of 12 steps, one killed (-9) after 4 checkpoints and resumed: the same losses.
    Slow (40-80 s): three training processes, which is what a kill and a resume are."""
    data = data_dir(tmp_path / "data", demo_records()[:48], dev=demo_records()[48:56])
    flags = [f"--config.{k}={v}" for k, v in lora_overrides(pretrained, **{"lora.base_dtype": base_dtype}).items()]
    args = lambda workdir: train_args(workdir, f"--config.data.manual_dir={data}", "--config.num_epochs=2",  # noqa: E731
                                      "--config.checkpoint.every_steps=1", *flags)
    for workdir in (tmp_path / "whole", tmp_path / "killed"):
        if workdir.name == "killed":
            kill_9_after(args(workdir), workdir, 4)
            assert 4 <= len(checkpoint_steps(workdir)) < 12
        done = run_command("train", *args(workdir))
        assert done.returncode == 0, done.stderr[-2000:]
    assert "on q,k,v,o,gate,up,down and 1 added token row" in done.stderr
    assert f"MiB ({base_dtype or 'as stored'})" in done.stderr
    losses = {w: {r["step"]: r["loss"] for r in read_metrics(tmp_path / w) if "loss" in r} for w in ("whole", "killed")}
    assert sorted(losses["killed"]) == list(range(1, 13))
    assert losses["killed"] == losses["whole"]

    sampled = run_command("sample", f"--checkpoint={tmp_path / 'killed'}", "--prompt=Hello", "--max_new_tokens=8", "--seed=0")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert sampled.stdout.strip()
