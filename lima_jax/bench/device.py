"""One-call accelerator check: `python -m lima_jax.bench --mode=device` prints one JSON report of the
fused attention kernels' numerics against `xla`, a full and a LoRA train step, decoding at batch 1 and 16,
and the server at 1, 4 and 16 clients (docs/bench.md lists the parts and their shapes). Each part has a
time budget: one that no longer fits is skipped with that reason, one still running at the deadline is
reported unfinished, one that fails reports its error, so the other parts' numbers still come out."""
from __future__ import annotations

import dataclasses
import gc
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from lima_jax.model import ModelConfig
from lima_jax.config import model_config
from lima_jax.log import say
from lima_jax.model import attention
from lima_jax.model import Llama, abstract_model
from lima_jax.recipe import lima_config

# The fused kernels each backend has, compared against xla.
KERNELS = {"gpu": ("cudnn",), "cuda": ("cudnn",), "tpu": ("splash",)}
# The numerics model: head dim 128 and T a multiple of 128 (what splash tiles by), bf16 (what cudnn
# takes); init_std 0.1 keeps the attention far from uniform, so a masking error shows.
NUMERICS_MODEL = ModelConfig(vocab_size=1024, dim=512, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=128, ffn_dim=1024,
                             max_len=512, residual_dropout=0.0, dtype="bfloat16", init_std=0.1)
LORA_RANK = 16


@dataclasses.dataclass(frozen=True)
class Plan:
    """The shapes and knobs of one check, and each part's time budget (seconds)."""
    name: str
    model: dict[str, Any]  # `lima_config` model keys
    seq_len: int
    batch_size: int
    steps: int
    prompt_len: int
    new_tokens: int
    repeats: int  # decode: timed rounds
    requests: int  # serve: timed requests per client
    budgets: dict[str, float]
    total_s: float


ACCELERATOR = Plan(
    name="1.1b",
    model={"dim": 2048, "num_layers": 16, "num_heads": 16, "num_kv_heads": 8, "ffn_dim": 8192, "vocab_size": 32000,
           "max_len": 2048, "residual_dropout": 0.2, "dtype": "bfloat16"},
    seq_len=2048, batch_size=4, steps=5, prompt_len=16, new_tokens=64, repeats=2, requests=2,
    budgets={"attention_numerics": 45, "train_full": 100, "train_lora": 80, "decode": 100, "serve": 115}, total_s=440,
)
CPU = Plan(
    name="tiny",
    model={"dim": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "ffn_dim": 128, "vocab_size": 256,
           "max_len": 256, "residual_dropout": 0.2, "dtype": "float32"},
    seq_len=32, batch_size=2, steps=2, prompt_len=8, new_tokens=4, repeats=1, requests=1,
    budgets={"attention_numerics": 5, "train_full": 20, "train_lora": 20, "decode": 20, "serve": 30}, total_s=120,
)


def plan_config(plan: Plan, lora_rank: int = 0, seed: int = 0) -> ml_collections.ConfigDict:
    config = lima_config("device-check", batch_size=plan.batch_size, **plan.model)
    config.lora.rank = lora_rank
    config.seed = seed
    return config


def packed_batch(cfg: ModelConfig, rows: int, seq_len: int, seed: int) -> dict[str, jax.Array]:
    """Random tokens, each row two segments whose positions restart."""
    from lima_jax.bench.train import random_batch

    batch = random_batch(cfg, rows, seq_len, seed)
    second = np.arange(seq_len) >= seq_len // 2
    batch["segment_ids"] = np.broadcast_to(1 + second, (rows, seq_len)).astype(batch["segment_ids"].dtype)
    batch["positions"] = np.broadcast_to(np.where(second, np.arange(seq_len) - seq_len // 2, np.arange(seq_len)),
                                         (rows, seq_len)).astype(batch["positions"].dtype)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _logits_and_grads(cfg: ModelConfig, params: dict, batch: dict) -> tuple[jax.Array, dict]:
    graphdef = nnx.graphdef(abstract_model(cfg))

    def loss(p: dict) -> tuple[jax.Array, jax.Array]:
        logits = nnx.merge(graphdef, p)(batch["tokens"], batch["positions"], batch["segment_ids"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean(), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads


def _max_abs(tree: Any) -> float:
    return max(float(jnp.max(jnp.abs(a.astype(jnp.float32)))) for a in jax.tree.leaves(tree))


def attention_numerics(impls: Sequence[str], cfg: ModelConfig = NUMERICS_MODEL, rows: int = 2, seq_len: int = 512,
                       seed: int = 0) -> dict[str, Any]:
    """Each kernel in `impls` against xla on one random model of `cfg`: logits and gradients."""
    params = nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(seed))))
    batch = packed_batch(cfg, rows, seq_len, seed)
    ref_logits, ref_grads = _logits_and_grads(cfg.replace(attention="xla"), params, batch)
    logits_scale, grads_scale = _max_abs(ref_logits), _max_abs(ref_grads)  # what each difference is read against
    out: dict[str, Any] = {"rows": rows, "seq_len": seq_len, "head_dim": cfg.resolved_head_dim, "dtype": cfg.dtype}
    for impl in impls:
        problem = attention.unsupported(impl, seq_len, cfg.resolved_head_dim, cfg.dtype)
        if problem:
            out[impl] = {"skipped": problem}
            continue
        logits, grads = _logits_and_grads(cfg.replace(attention=impl), params, batch)
        out[impl] = {
            "logits_max_abs_diff": float(jnp.max(jnp.abs(logits - ref_logits))),
            "logits_max_abs": logits_scale,
            "grads_max_abs_diff": _max_abs(jax.tree.map(lambda a, b: a.astype(jnp.float32) - b, grads, ref_grads)),
            "grads_max_abs": grads_scale,
        }
    return out


def _part(name: str, plan: Plan, deadline: float, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One part's record: its numbers, or why it was skipped or failed, with its seconds and budget. It
    runs on a thread that is waited for until the check's deadline at most: a part still compiling then
    is reported unfinished, and the report still comes out in time."""
    budget = plan.budgets[name]
    if time.monotonic() + budget > deadline:
        return {"skipped": f"its {budget:g}s budget no longer fits in the check's {plan.total_s:g}s"}
    say(f"bench: device check: {name}")
    record: dict[str, Any] = {}

    def work() -> None:
        try:
            record.update(run())
        except Exception as e:  # noqa: BLE001 - one part failing (e.g. out of memory) must not lose the others' numbers
            message = str(e).strip().splitlines()
            record["error"] = f"{type(e).__name__}: {message[0] if message else ''}"
            say(f"bench: device check: {name} failed: {record['error']}")
        gc.collect()  # the part's arrays go before the next part allocates its own

    start = time.monotonic()
    worker = threading.Thread(target=work, name=f"device check {name}", daemon=True)
    worker.start()
    worker.join(max(deadline - start, 0.0))
    seconds = time.monotonic() - start
    if worker.is_alive():  # it goes on in the background; the command exits without it
        return {"error": f"unfinished at the check's {plan.total_s:g}s deadline", "unfinished": True,
                "seconds": round(seconds, 2), "budget_s": budget, "over_budget": True}
    return {**record, "seconds": round(seconds, 2), "budget_s": budget, "over_budget": seconds > budget}


def device_check(seed: int = 0, plan: Plan | None = None) -> dict[str, Any]:
    """Runs every part that fits its budget on this backend; returns the one JSON record."""
    from lima_jax.bench.serve import serve_bench_record
    from lima_jax.bench.train import bench, decode_bench, model_fields

    device = jax.devices()[0]
    backend = jax.default_backend()
    plan = plan or (CPU if backend == "cpu" else ACCELERATOR)
    start = time.monotonic()
    deadline = start + plan.total_s
    config = plan_config(plan, seed=seed)
    common = model_fields(config, model_config(config), device, plan.name)
    train_args = {"seq_len": plan.seq_len, "batch_size": plan.batch_size, "steps": plan.steps, "compare_torch": False,
                  "seed": seed}

    def own(record: dict[str, Any]) -> dict[str, Any]:  # what the top level says once is left out
        return {k: v for k, v in record.items() if k not in common}

    kernels = KERNELS.get(backend, ())
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "attention_numerics": lambda: attention_numerics(kernels, seed=seed),
        "train_full": lambda: own(bench(plan_config(plan, seed=seed), **train_args)),
        "train_lora": lambda: own(bench(plan_config(plan, LORA_RANK, seed), **train_args)),
        "decode": lambda: own(decode_bench(plan_config(plan, seed=seed), batches=(1, 16), prompt_len=plan.prompt_len,
                                           new_tokens=plan.new_tokens, repeats=plan.repeats, compare_torch=False, seed=seed)),
        "serve": lambda: own(serve_bench_record(plan_config(plan, seed=seed), None, plan.name, concurrency=(1, 4, 16),
                                                requests=plan.requests, prompt_len=plan.prompt_len,
                                                new_tokens=plan.new_tokens, seed=seed)),
    }
    record: dict[str, Any] = {"mode": "device", "device_kind": device.device_kind, "backend": backend,
                              "device_count": jax.device_count(), **common, "budget_s": plan.total_s}
    for name, run in parts.items():
        if name == "attention_numerics" and not kernels:
            record[name] = {"skipped": f"no fused kernel on {backend}"}
            continue
        record[name] = _part(name, plan, deadline, run)
    record["failed"] = [name for name in parts if "error" in record[name]]
    record["unfinished"] = any(record[name].get("unfinished") for name in parts)
    record["seconds"] = round(time.monotonic() - start, 2)
    return record
