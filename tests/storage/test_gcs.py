"""gs:// paths for real, against a Cloud Storage emulator (gcp-storage-emulator, in memory, on 127.0.0.1;
tests/support/gcs_emulator.py runs it with two gaps in its download protocol filled): a run whose workdir, data and tokenizer are in a bucket is preempted, resumed, sampled and answered from
there and ends as a local run does; weights convert into and out of a bucket; a report is written to
one; a missing bucket is one line before anything compiles; and nothing lands in a local `gs:` folder."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load

from support.commands import call_command
from support.paths import STORIES260K
from lima_jax.data import demo_dir
from lima_jax.evaluate.answers.records import prompt_id
from lima_jax.weights.convert import read_weights
from lima_jax.weights.hf import config_to_hf
from lima_jax.weights.names import params_to_hf

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gcp_storage_emulator") is None,
                                reason="needs the Cloud Storage emulator: pip install gcp-storage-emulator (the test extra)")


def _run(emulator, cwd, *args):
    """A lima_jax command against the emulator, in `cwd`; the TFDS cache of a gs:// run goes under `cwd`."""
    env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator.url, XDG_CACHE_HOME=str(cwd / "cache"))
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def _done(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _no_gs_folder(root):
    assert not [p for p in root.rglob("gs:*")], "a gs:// path was written as a local folder"


# The tiny model on 200 demo conversations: 24 steps an epoch, a checkpoint every 16.
TRAIN = ["lima_jax.train", "--config=tiny", "--config.num_epochs=2", "--config.batch_size=8", "--config.data.max_len=64",
         "--config.data.dev_size=8", "--config.checkpoint.async_save=False", "--config.checkpoint.every_steps=16"]


def _metrics(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_a_run_in_a_bucket_resumes_and_is_sampled_as_a_local_run_is(emulator, tmp_path):
    """About 40 s: the same run locally, then in the bucket preempted, resumed and sampled, each in a process
    of its own pointed at the emulator, every byte through its HTTP API."""
    lines = (demo_dir() / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:200]
    tokenizer = (demo_dir() / "tokenizer.model").read_bytes()
    local_data = tmp_path / "data"
    local_data.mkdir()
    (local_data / "train.jsonl").write_text("".join(lines), encoding="utf-8")
    (local_data / "tokenizer.model").write_bytes(tokenizer)
    emulator.upload("data/train.jsonl", "".join(lines).encode())
    emulator.upload("tok/tokenizer.model", tokenizer)

    local = [*TRAIN, "--config.workdir=local-run", f"--config.data.manual_dir={local_data}",
             f"--config.data.tokenizer={local_data / 'tokenizer.model'}"]
    _done(call_command(*local, cwd=tmp_path))  # a local run needs no emulator: in this process
    expected = _metrics((tmp_path / "local-run" / "metrics.jsonl").read_text())

    cloud = [*TRAIN, "--config.workdir=gs://bucket/runs/tiny", "--config.data.manual_dir=gs://bucket/data",
             "--config.data.tokenizer=gs://bucket/tok/tokenizer.model"]
    proc = _run(emulator, tmp_path, *cloud)
    deadline = time.time() + 240
    while "runs/tiny/checkpoints/16/commit_success.txt" not in emulator.names("runs/tiny/checkpoints/16/"):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint at step 16 in the bucket"
        time.sleep(0.1)
    # Mid-epoch 1 (it ends at step 24), and often while step 16 is being saved: a step is never saved twice.
    proc.send_signal(signal.SIGTERM)
    _, err = _finish(proc)
    assert "preempted: saved step" in err
    interrupted = _metrics(emulator.read("runs/tiny/metrics.jsonl").decode())
    assert 16 <= len(interrupted) < len(expected)

    _, err = _finish(_run(emulator, tmp_path, *cloud))
    assert "resumed gs://bucket/runs/tiny at step" in err
    resumed = _metrics(emulator.read("runs/tiny/metrics.jsonl").decode())
    assert [r["step"] for r in resumed] == [r["step"] for r in expected]
    for got, want in zip(resumed, expected):
        for key in ("loss", "grad_norm", "learning_rate", "dev_loss"):
            if key in want:
                assert got[key] == want[key], (key, got, want)

    names = set(emulator.names("runs/tiny/"))
    for name in ("config.json", "dev.jsonl", "metrics.jsonl", "tokenizer.model", "checkpoints/48/commit_success.txt",
                 "checkpoints/48/params/commit_success.txt"):
        assert f"runs/tiny/{name}" in names, name
    assert any(n.startswith("runs/tiny/tensorboard/events.out.tfevents") for n in names)
    with_opt_state = {n.split("/")[3] for n in names if n.startswith("runs/tiny/checkpoints/") and "/opt_state/" in n}
    assert with_opt_state == {"48"}  # the latest step only: the steps before dropped theirs
    assert emulator.read("runs/tiny/dev.jsonl") == (tmp_path / "local-run" / "dev.jsonl").read_bytes()

    sample = ["lima_jax.sample", "--prompt=What is 3 plus 4?", "--temperature=0", "--max_new_tokens=12", "--print_ids"]
    from_bucket, _ = _finish(_run(emulator, tmp_path, *sample, "--checkpoint=gs://bucket/runs/tiny"))
    from_disk = _done(call_command(*sample, "--checkpoint=local-run", cwd=tmp_path))
    assert from_bucket == from_disk and len(from_bucket.split()) > 0  # the same token ids

    prompts = demo_dir() / "test.jsonl"
    _finish(_run(emulator, tmp_path, "lima_jax.evaluate.generate", "--checkpoint=gs://bucket/runs/tiny",
                 f"--prompts={prompts}", "--output=gs://bucket/responses/tiny.jsonl", "--temperature=0",
                 "--max_new_tokens=8", "--batch_size=16"))
    responses = [json.loads(line) for line in emulator.read("responses/tiny.jsonl").decode().splitlines()]
    asked = [json.loads(line)["conversations"] for line in prompts.read_text().splitlines()]
    assert sorted(r["id"] for r in responses) == sorted(prompt_id(turns) for turns in asked)
    assert {r["generator"] for r in responses} == {"tiny"}
    _no_gs_folder(tmp_path)


def test_weights_convert_into_and_out_of_a_bucket(emulator, tmp_path):
    _finish(_run(emulator, tmp_path, "lima_jax.convert", f"--input={STORIES260K}", "--output=gs://bucket/ckpt/stories"))
    assert "ckpt/stories/params/commit_success.txt" in emulator.names("ckpt/stories/")
    _finish(_run(emulator, tmp_path, "lima_jax.convert", "--input=gs://bucket/ckpt/stories", "--output_format=hf",
                 "--output=gs://bucket/hf/stories"))
    assert sorted(emulator.names("hf/stories/")) == ["hf/stories/config.json", "hf/stories/generation_config.json",
                                                     "hf/stories/model.safetensors"]
    cfg, params = read_weights(STORIES260K, "llama2c", None)  # what a direct llama2c -> hf export writes
    direct = dict(params_to_hf(params, cfg))
    through_bucket = load(emulator.read("hf/stories/model.safetensors"))
    assert sorted(through_bucket) == sorted(direct)
    for name, tensor in direct.items():
        np.testing.assert_array_equal(through_bucket[name], tensor, err_msg=name)
    assert json.loads(emulator.read("hf/stories/config.json")) == config_to_hf(cfg, "float32")

    r = _run(emulator, tmp_path, "lima_jax.convert", "--input=gs://bucket/hf/stories", "--output=stories")
    _, err = r.communicate(timeout=120)
    assert r.returncode == 2
    assert err.strip().splitlines()[-1] == ("error: --input gs://bucket/hf/stories: hf weights are memory-mapped from local "
                                            "files; copy them to this machine first")
    _no_gs_folder(tmp_path)


def test_a_report_reads_its_judgments_from_and_writes_to_a_bucket(emulator, tmp_path):
    judgments = "".join(json.dumps({"key": f"k{i}", "kind": "absolute", "judge": "j", "prompt_id": f"p{i}",
                                    "verdict": v, "output_hash": "h", "version": 1}) + "\n"
                        for i, v in enumerate(["Pass", "Excellent", "Fail", "Pass"]))
    emulator.upload("judgments/absolute.jsonl", judgments.encode())
    out, _ = _finish(_run(emulator, tmp_path, "lima_jax.evaluate.report", "--out_dir=gs://bucket/report",
                          "--absolute=gs://bucket/judgments/absolute.jsonl", "--bootstrap=10"))
    assert sorted(emulator.names("report/")) == ["report/absolute.png", "report/report.json", "report/report.md"]
    assert out == emulator.read("report/report.md").decode() + "\n"  # printed, then a newline
    assert json.loads(emulator.read("report/report.json"))["absolute"]["counts"] == {"Fail": 1, "Pass": 2, "Excellent": 1}
    assert emulator.read("report/absolute.png").startswith(b"\x89PNG\r\n\x1a\n")
    _no_gs_folder(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["lima_jax.train", "--config=tiny", "--config.workdir=gs://nobucket/runs/tiny"],
     "error: config key workdir: gs://nobucket/runs/tiny: cannot write there (no bucket nobucket, or no access to it)"),
    (["lima_jax.evaluate.generate", "--checkpoint=gs://bucket/none", f"--prompts={demo_dir() / 'test.jsonl'}",
      "--output=gs://nobucket/responses.jsonl"],
     "error: --output gs://nobucket: cannot write there (no bucket nobucket, or no access to it)"),
])
def test_a_missing_bucket_is_one_line_before_compiling(emulator, tmp_path, args, message):
    r = _run(emulator, tmp_path, *args)
    _, err = r.communicate(timeout=120)
    assert r.returncode == 2
    assert err.strip().splitlines() == [message]  # nothing before it: no data read, no model built
    _no_gs_folder(tmp_path)
