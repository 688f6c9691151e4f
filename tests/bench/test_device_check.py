"""The one-call accelerator check (`python -m lima_jax.bench --mode=device`): its CPU subset, run as a user
runs it, prints one report whose numbers are sane; the parts this host cannot run (a fused kernel's
numerics, the 1.1B shapes) are checked as far as a CPU can."""
import dataclasses
import time

import pytest

from lima_jax.model import flops
from lima_jax.model import param_count
from lima_jax.bench import device
from lima_jax.config import model_config, validate
from lima_jax.model import attention
from lima_jax.lora import spec as lora_spec
from support.commands import ONE_DEVICE_ENVIRONMENT, last_json, run_command, succeeded


@pytest.fixture(scope="module")
def report():
    """The CPU subset once, through the command, on one device as a user's shell has it. Each of its parts
    (two train steps, six decode programs, the server's six) compiles its own programs, as it must to measure
    them; the tests read the report's shape and sanity, not its speeds, so it compiles at the suite's fast
    level (XLA's default took 30 s and 46 CPU s here alone, -O0 20 s and 28). Every test below reads this run."""
    start = time.monotonic()
    stdout = succeeded(run_command("bench", "--mode=device", env={**ONE_DEVICE_ENVIRONMENT, "JAX_PLATFORMS": "cpu"}))
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout[-2000:]
    return last_json(stdout), time.monotonic() - start


def test_cpu_subset_reports_every_part(report):
    record, seconds = report
    assert (record["mode"], record["backend"], record["device_kind"]) == ("device", "cpu", "cpu")
    assert record["attention_numerics"] == {"skipped": "no fused kernel on cpu"}
    assert record["failed"] == [] and record["unfinished"] is False
    for name, budget in device.CPU.budgets.items():
        if name != "attention_numerics":
            assert record[name]["budget_s"] == budget and 0 < record[name]["seconds"], name
    assert record["seconds"] < device.CPU.total_s and seconds < 2 * device.CPU.total_s
    assert (record["dim"], record["num_layers"], record["shape"]) == (64, 2, "tiny")


def test_cpu_subset_train_steps_full_and_lora(report):
    record, _ = report
    cfg = model_config(device.plan_config(device.CPU))
    full, lora = record["train_full"], record["train_lora"]
    assert (full["lora_rank"], lora["lora_rank"]) == (0, device.LORA_RANK)
    assert full["trained_params"] == param_count(cfg) > lora["trained_params"] > 0
    assert full["flops_per_token"] == flops.train_flops_per_token(cfg, device.CPU.seq_len)
    assert lora["flops_per_token"] == flops.train_flops_per_token(cfg, device.CPU.seq_len, frozen=True)
    for part in (full, lora):
        assert part["step_s"] > 0 and part["train_tokens_per_s"] > 0
        assert 0 < part["mfu"] <= 1
        assert "dim" not in part  # said once, at the top


def test_cpu_subset_decodes_and_serves(report):
    record, _ = report
    assert record["decode"]["decode_tokens_per_s_b1"] > 0 and record["decode"]["decode_tokens_per_s_b16"] > 0
    for clients in (1, 4, 16):
        assert record["serve"][f"output_tokens_per_s_c{clients}"] > 0, clients
        assert record["serve"][f"requests_per_s_c{clients}"] > 0, clients


def test_attention_numerics_compare_a_kernel_with_xla_and_name_what_cannot_run():
    """Splash (interpreted on a CPU) against xla: the logits and gradients agree to float32 rounding, and
    differ (the kernel did run); cudnn cannot take float32 and says so."""
    cfg = device.NUMERICS_MODEL.replace(dim=256, num_heads=2, num_kv_heads=1, num_layers=1, vocab_size=128, ffn_dim=256,
                                        max_len=128, dtype="float32")
    out = device.attention_numerics(("splash", "cudnn"), cfg, rows=2, seq_len=128)
    splash = out["splash"]
    assert 0 < splash["logits_max_abs_diff"] < 1e-3 * splash["logits_max_abs"]
    assert 0 < splash["grads_max_abs_diff"] < 1e-3 * splash["grads_max_abs"]
    assert out["cudnn"]["skipped"].startswith("model.attention=cudnn needs model.dtype in bfloat16")


def test_parts_past_the_deadline_skip_fail_or_stop_being_waited_for():
    plan = dataclasses.replace(device.CPU, budgets={"part": 0.2}, total_s=1)
    now = time.monotonic()
    assert device._part("part", plan, now + 0.1, dict)["skipped"] == "its 0.2s budget no longer fits in the check's 1s"

    def fails():
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory\nmore detail")

    failed = device._part("part", plan, now + 100, fails)
    assert failed["error"] == "RuntimeError: RESOURCE_EXHAUSTED: out of memory" and "unfinished" not in failed
    slow = device._part("part", plan, time.monotonic() + 0.5, lambda: time.sleep(3) or {})
    assert slow["unfinished"] and slow["over_budget"] and slow["seconds"] < 2
    assert device._part("part", plan, time.monotonic() + 100, lambda: {"x": 1})["x"] == 1


def test_the_accelerator_plan_is_a_1b_model_the_fused_kernels_take():
    config = device.plan_config(device.ACCELERATOR, device.LORA_RANK)
    validate(config)
    cfg = model_config(config)
    assert 1.0e9 < param_count(cfg) < 1.2e9
    assert lora_spec.from_keys(config).rank == device.LORA_RANK
    plan, numerics = device.ACCELERATOR, device.NUMERICS_MODEL
    assert attention.resolve("auto", plan.seq_len, cfg.resolved_head_dim, cfg.dtype, where="gpu") == "cudnn"
    assert attention.resolve("auto", plan.seq_len, cfg.resolved_head_dim, cfg.dtype, where="tpu") == "splash"
    for impl in ("cudnn", "splash"):
        assert attention.unsupported(impl, 512, numerics.resolved_head_dim, numerics.dtype) is None
    assert sum(plan.budgets.values()) <= plan.total_s < 8 * 60


def test_the_device_mode_picks_its_own_model():
    from support.commands import call_command, last_error

    result = call_command("bench", "--mode=device", "--config=tiny")
    assert result.returncode == 2
    assert last_error(result) == "error: --mode=device picks its own model (lima_jax/bench/device.py): drop --config and --checkpoint"
