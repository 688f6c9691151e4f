"""The benchmark: one JSON record whose numbers are positive and agree with each other (never timed)."""
import json
import math
import os
import subprocess
import sys

import pytest

from lima_jax.model import flops
from lima_jax.bench import train as bench
from lima_jax.config import load_config, model_config
from lima_jax.model import param_count
from lima_jax.errors import LimaError
from support.commands import call_command

TINY = {  # seconds per run: the point is the record, not the speed
    "model.dim": 64,
    "model.num_layers": 2,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "model.ffn_dim": 128,
    "model.vocab_size": 256,
}
SEQ, BATCH, STEPS = 32, 2, 2
KEYS = {
    "train_tokens_per_s", "tflops", "mfu", "peak_tflops", "peak_source", "compile_s", "step_s", "step_s_min", "first_step_s",
    "device", "platform", "seq_len", "batch_size", "tokens_per_step", "flops_per_token", "params", "dim", "num_layers",
    "num_heads", "num_kv_heads", "ffn_dim", "vocab_size", "steps", "loss", "residual_dropout", "step_s_iqr",
    "cpu_s_per_token", "cpu_cores_busy", "noise", "noise_note",
}
TORCH_KEYS = {
    "torch_tokens_per_s", "torch_step_s", "torch_attention", "torch_threads", "speedup_vs_torch", "speedup_vs_torch_iqr",
    "speedup_vs_torch_range", "cpu_speedup_vs_torch", "torch_tflops", "torch_mfu", "torch_loss", "torch_cpu_s_per_token",
    "torch_cpu_cores_busy", "torch_step_s_iqr",
}


def close(a, b, rel=1e-4):
    return math.isclose(a, b, rel_tol=rel)


def check_record(record, config, torch_expected):
    assert KEYS <= record.keys()
    assert (TORCH_KEYS <= record.keys()) == torch_expected
    if not torch_expected:
        assert not TORCH_KEYS & record.keys()
    cfg = model_config(config)
    assert (record["seq_len"], record["batch_size"], record["steps"]) == (SEQ, BATCH, STEPS)
    assert record["tokens_per_step"] == SEQ * BATCH
    assert (record["dim"], record["num_layers"], record["vocab_size"]) == (cfg.dim, cfg.num_layers, cfg.vocab_size)
    assert record["flops_per_token"] == flops.train_flops_per_token(cfg, SEQ)
    for key in ("train_tokens_per_s", "tflops", "mfu", "peak_tflops", "compile_s", "step_s", "step_s_min", "first_step_s",
                "cpu_s_per_token", "cpu_cores_busy"):
        assert record[key] > 0, key
    assert record["step_s_min"] <= record["step_s_iqr"][0] <= record["step_s"] <= record["step_s_iqr"][1]
    assert math.isfinite(record["loss"])
    # The derived numbers agree up to the 6 significant digits they are printed with.
    assert close(record["train_tokens_per_s"], record["tokens_per_step"] / record["step_s"])
    assert close(record["tflops"], record["flops_per_token"] * record["train_tokens_per_s"] / 1e12)
    assert close(record["mfu"], record["tflops"] / record["peak_tflops"])
    if "peak_tflops_range" in record:  # measured around the rounds: the median of the probes
        low, high = record["peak_tflops_range"]
        assert low <= record["peak_tflops"] <= high
        assert close(record["noise"]["peak_rel_range"], (high - low) / record["peak_tflops"], rel=1e-2)
    noise = record["noise"]
    assert noise["step_s_rel_iqr"] >= 0 and noise["cores"] >= 1 and len(noise["load_average_1m"]) == 2
    assert f"{STEPS} paired rounds" in record["noise_note"]
    if torch_expected:
        assert record["torch_attention"] in ("eager", "sdpa")
        assert record["torch_threads"] >= 1
        for key in ("torch_tokens_per_s", "torch_step_s", "speedup_vs_torch", "cpu_speedup_vs_torch", "torch_tflops",
                    "torch_mfu", "torch_cpu_s_per_token", "torch_cpu_cores_busy"):
            assert record[key] > 0, key
        assert math.isfinite(record["torch_loss"])
        assert close(record["torch_tokens_per_s"], record["tokens_per_step"] / record["torch_step_s"])
        low, high = record["speedup_vs_torch_range"]
        q1, q3 = record["speedup_vs_torch_iqr"]
        assert low <= q1 <= record["speedup_vs_torch"] <= q3 <= high  # the median of the per-round ratios
        assert close(record["torch_tflops"], record["flops_per_token"] * record["torch_tokens_per_s"] / 1e12)
        assert close(record["torch_mfu"], record["torch_tflops"] / record["peak_tflops"])
        assert "per-round ratio to torch" in record["noise_note"]


def tiny_config(**overrides):
    return load_config("tiny", {**TINY, **overrides})


def test_bench_record_without_torch():
    config = tiny_config()
    record = bench.bench(config, seq_len=SEQ, batch_size=BATCH, steps=STEPS, compare_torch=False)
    check_record(record, config, torch_expected=False)
    assert record["platform"] == "cpu"
    assert record["peak_source"].startswith("measured")  # the CPU peak is measured in the run
    assert record["residual_dropout"] == config.model.residual_dropout  # dropout as configured (0.2 here)


def test_bench_record_with_torch():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    config = tiny_config(**{"model.residual_dropout": 0.0, "peak_tflops": 0.5})
    record = bench.bench(config, seq_len=SEQ, batch_size=BATCH, steps=STEPS)  # torch on by default on a CPU
    check_record(record, config, torch_expected=True)
    assert record["peak_tflops"] == 0.5 and record["peak_source"] == "config.peak_tflops"
    assert set(record["torch_attention_probe_s"]) == {"eager", "sdpa"}  # auto times both, keeps the faster
    assert record["torch_attention_probe_s"][record["torch_attention"]] == min(record["torch_attention_probe_s"].values())


def test_bench_torch_attention_choice():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    config = tiny_config(**{"model.residual_dropout": 0.0, "peak_tflops": 0.5})
    record = bench.bench(config, seq_len=SEQ, batch_size=BATCH, steps=STEPS, compare_torch=True, torch_attention="eager")
    check_record(record, config, torch_expected=True)
    assert record["torch_attention"] == "eager" and record["torch_attention_probe_s"] == {}


def test_cpu_peak_is_the_best_size():
    probe = flops.fastest_matmul_probe(sizes=(128, 256), repeats=2)
    assert probe.size in (128, 256) and probe(repeats=1) > 0
    assert flops.measured_matmul_tflops(sizes=(128, 256), repeats=2) > 0


def test_flops_count_the_output_projection_not_the_input_gather():
    """PaLM's model FLOPs: a bigger vocabulary adds 6 FLOPs per output-head weight (a matmul),
    none for the input embedding (a gather), unless the two are tied."""
    small, big = (model_config(tiny_config(**{"model.vocab_size": v})) for v in (256, 512))
    extra = flops.train_flops_per_token(big, SEQ) - flops.train_flops_per_token(small, SEQ)
    assert extra == 6 * 256 * small.dim
    assert param_count(big) - param_count(small) == 2 * 256 * small.dim  # both tables grew
    tied = model_config(tiny_config(**{"model.tie_embeddings": True}))
    cfg = model_config(tiny_config())
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * SEQ
    assert flops.train_flops_per_token(tied, SEQ) == 6 * param_count(tied) + attention
    assert flops.train_flops_per_token(cfg, SEQ) == 6 * (param_count(cfg) - cfg.vocab_size * cfg.dim) + attention
    # LoRA: frozen weights get no gradient, so their backward pass is half the usual 4 FLOPs.
    assert flops.train_flops_per_token(cfg, SEQ, frozen=True) == 4 * (param_count(cfg) - cfg.vocab_size * cfg.dim) + attention


def test_paired_rounds_interleave_steps_and_probes():
    calls = []

    def runner(name):
        def step():
            calls.append(name)
            return 0.5
        return step

    def probe():
        calls.append("peak")
        return 1.0

    samples, peaks = bench.paired_rounds([runner("ours"), runner("torch")], 3, probe)
    # A probe before every round and after the last; the order within a round alternates.
    assert calls == ["peak", "ours", "torch", "peak", "torch", "ours", "peak", "ours", "torch", "peak"]
    assert peaks == [1.0] * 4 and [len(s) for s in samples] == [3, 3]
    assert all(wall == 0.5 and cpu >= 0 for wall, cpu in samples[0] + samples[1])


def test_spread_is_median_quartiles_and_range():
    s = bench.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["min"], s["q1"], s["median"], s["q3"], s["max"]) == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert bench.spread([2.0]) == {"median": 2.0, "q1": 2.0, "q3": 2.0, "min": 2.0, "max": 2.0}


def test_shape_ci_overrides_and_explicit_keys_win():
    config = load_config("tiny")
    bench.apply_shape(config, "ci", explicit={"model.num_layers"})
    m = config.model
    assert (m.dim, m.num_heads, m.num_kv_heads, m.ffn_dim, m.vocab_size, m.residual_dropout) == (512, 8, 8, 1376, 32000, 0.0)
    assert m.num_layers == load_config("tiny").model.num_layers  # the user's --config.model.num_layers is kept
    assert bench.explicit_overrides(["x", "--config=tiny", "--config.model.num_layers=2", "--seq_len=4"]) == {"model.num_layers"}
    with pytest.raises(LimaError, match="--shape"):
        bench.apply_shape(config, "huge")


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(LimaError, match="positive"):
        bench.bench(tiny_config(), seq_len=0, batch_size=BATCH, steps=STEPS, compare_torch=False)
    with pytest.raises(LimaError, match="grad_accum"):
        bench.bench(tiny_config(grad_accum=3), seq_len=SEQ, batch_size=BATCH, steps=STEPS, compare_torch=False)


def test_cli_prints_one_json_line():
    args = [f"--config.{k}={v}" for k, v in TINY.items()]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's shell has
    result = subprocess.run(
        [sys.executable, "-m", "lima_jax.bench", "--config=tiny", *args, f"--seq_len={SEQ}", f"--batch_size={BATCH}",
         f"--steps={STEPS}", "--compare_torch=false", "--config.peak_tflops=0.5"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    record = json.loads(lines[0])
    check_record(record, tiny_config(), torch_expected=False)
    assert record["shape"] == "none"


def test_cli_rejects_an_unknown_key():
    result = call_command("bench", "--config=tiny", "--config.model.nope=1")
    assert result.returncode == 2
    assert "nope" in result.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------
# --mode=decode
# ----------------------------------------------------------------------------------------------
DECODE_KEYS = {
    "ttft_s", "decode_tokens_per_s_b1", "decode_tokens_per_s_b4", "roofline_fraction", "memory_bandwidth_gb_s",
    "weight_bytes_per_step", "roofline_tokens_per_s_b1", "b4_over_b1", "prompt_len", "new_tokens", "mode",
    "lima_sampling_tokens_per_s_b1", "lima_sampling_tokens_per_s_b4",
}
TORCH_DECODE_KEYS = {
    "torch_ttft_s", "torch_decode_tokens_per_s_b1", "torch_decode_tokens_per_s_b4", "decode_speedup_vs_torch_b1",
    "decode_speedup_vs_torch_b4", "greedy_prefix_matching_torch", "torch_lima_sampling_tokens_per_s_b1",
    "lima_sampling_speedup_vs_torch_b4",
}
NEW_TOKENS = 6


def check_decode_record(record, config, torch_expected):
    assert DECODE_KEYS <= record.keys()
    assert (TORCH_DECODE_KEYS <= record.keys()) == torch_expected
    cfg = model_config(config)
    assert record["mode"] == "decode" and record["new_tokens"] == NEW_TOKENS
    for key in ("ttft_s", "decode_tokens_per_s_b1", "decode_tokens_per_s_b4", "roofline_fraction", "memory_bandwidth_gb_s",
                "lima_sampling_tokens_per_s_b1", "lima_sampling_tokens_per_s_b4"):
        assert record[key] > 0, key
    # Bytes one step reads: every parameter but the (untied) input embedding, in float32.
    assert record["weight_bytes_per_step"] == (param_count(cfg) - cfg.vocab_size * cfg.dim) * 4
    bandwidth = record["memory_bandwidth_gb_s"] * 1e9
    assert close(record["roofline_tokens_per_s_b1"], bandwidth / record["weight_bytes_per_step"])
    assert close(record["roofline_fraction"], record["decode_tokens_per_s_b1"] / record["roofline_tokens_per_s_b1"], rel=1e-3)
    assert close(record["b4_over_b1"], record["decode_tokens_per_s_b4"] / record["decode_tokens_per_s_b1"], rel=1e-3)
    if "decode_compile_s" in record:  # depths 1 and 2 here
        seconds = record["decode_compile_s"]
        assert set(seconds) == {"1", "2"} and all(v >= 0 for v in seconds.values())
        assert close(record["decode_compile_2_over_1_layers"], seconds["2"] / max(seconds["1"], 1e-9), rel=1e-2)
    if torch_expected:
        for b in (1, 4):
            assert close(record[f"decode_speedup_vs_torch_b{b}"],
                         record[f"decode_tokens_per_s_b{b}"] / record[f"torch_decode_tokens_per_s_b{b}"], rel=1e-3)
            assert close(record[f"lima_sampling_speedup_vs_torch_b{b}"],
                         record[f"lima_sampling_tokens_per_s_b{b}"] / record[f"torch_lima_sampling_tokens_per_s_b{b}"], rel=1e-3)
        # Same weights, both greedy: transformers generates exactly our tokens.
        assert record["greedy_prefix_matching_torch"] == NEW_TOKENS


def test_decode_record_with_torch_generates_the_same_tokens():
    """About 20 s: transformers imported and its generate timed beside ours at two batch sizes."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    config = tiny_config()
    record = bench.decode_bench(config, batches=(1, 4), prompt_len=5, new_tokens=NEW_TOKENS, repeats=1, compare_torch=True)
    check_decode_record(record, config, torch_expected=True)


def test_decode_cli_prints_one_json_line():
    args = [f"--config.{k}={v}" for k, v in TINY.items()]
    result = call_command("bench", "--mode=decode", "--config=tiny", *args, "--decode_batches=1,4", "--prompt_len=5",
                          f"--new_tokens={NEW_TOKENS}", "--repeats=1", "--compare_torch=false", "--compile_layers=1,2")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    record = json.loads(lines[0])
    check_decode_record(record, tiny_config(), torch_expected=False)
    assert "decode_compile_s" in record
    assert "bench: timing: 100%" in result.stderr  # progress after compiling, where it printed nothing (issue 26)


def test_decode_bad_arguments_are_one_line_errors():
    with pytest.raises(LimaError, match="--new_tokens must be >= 2"):
        bench.decode_bench(tiny_config(), new_tokens=1, compare_torch=False)
    with pytest.raises(LimaError, match="--decode_batches"):
        bench.parse_batches(["1", "x"])
