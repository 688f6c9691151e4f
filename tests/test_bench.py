"""The training benchmark's report: its keys, and figures consistent with each other (never timed)."""
import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("compare", ["false", "true"])
def test_bench_reports_consistent_figures(compare):
    r = subprocess.run([sys.executable, "-m", "lima_jax.bench", "--config=tiny", "--seq_len=32", "--batch_size=2",
                        "--steps=2", f"--compare_torch={compare}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("train_tokens_per_s", "tflops", "mfu", "compile_s", "step_s", "peak_tflops"):
        assert out[key] > 0, key
    assert out["tokens_per_step"] == 64
    assert out["tflops"] == pytest.approx(out["flops_per_token"] * out["train_tokens_per_s"] / 1e12, rel=1e-3)
    assert out["mfu"] == pytest.approx(out["tflops"] / out["peak_tflops"], rel=1e-3)
    if compare == "true":
        assert out["speedup_vs_torch"] == pytest.approx(out["train_tokens_per_s"] / out["torch_tokens_per_s"], rel=1e-3)
