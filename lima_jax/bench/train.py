"""Training throughput and MFU of the real train step, side by side with PyTorch (`transformers`).

    python -m lima_jax.bench --config=tiny --shape=ci --seq_len=512 --batch_size=4

Times the step `lima_jax.train` runs on one device with random tokens, in rounds that alternate one
step of ours with one of `transformers.LlamaForCausalLM`: on a shared host the wall clock drifts, and
each round's ratio cancels the drift the two steps share. On a CPU the peak MFU divides by is an fp32
matmul measured between the rounds, so it sees the same machine as the steps. The record's keys are
described in docs/bench.md."""
from __future__ import annotations

import math
import os
import statistics
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lima_jax import sharding
from lima_jax.model import flops
from lima_jax.bench import SHAPES, TORCH_ATTENTION, decode as bench_decode
from lima_jax.errors import LimaError
from lima_jax.log import say
from lima_jax.config import model_config, override_keys, prepare, set_key
from lima_jax.data.batches import BATCH_SCHEMA
from lima_jax.model import ModelConfig, param_count
from lima_jax.train import optimizer as optim
from lima_jax.lora import base as lora_base
from lima_jax.lora.spec import LoraSpec
from lima_jax.model import Llama
from lima_jax.train.aot import abstract_frozen, aot_lora
from lima_jax.train.state import (batch_shardings, init_adapters, init_state, jit_train_step, shardings_of,
                                  state_from_params, trained_dtype)
from lima_jax.weights.hf import config_to_hf


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def apply_shape(config: ml_collections.ConfigDict, shape: str, explicit: set[str] = frozenset()) -> None:
    """Applies a named shape's overrides, except keys the user set explicitly (`--config.k=v`)."""
    if shape not in SHAPES:
        raise LimaError(f"--shape {shape!r}: expected one of {', '.join(SHAPES)}")
    for key, value in SHAPES[shape].items():
        if key not in explicit:
            set_key(config, key, value)


def random_batch(cfg: ModelConfig, batch_size: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """Random tokens; targets are the next token (random after the last); weights 1; one segment."""
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, cfg.vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)).copy()
    batch = {
        "tokens": stream[:, :-1].copy(),
        "targets": stream[:, 1:].copy(),
        "weights": np.ones((batch_size, seq_len)),
        "positions": positions,
        "segment_ids": np.ones((batch_size, seq_len)),
    }
    return {k: batch[k].astype(dtype) for k, dtype in BATCH_SCHEMA.items()}


def random_frozen_base(cfg: ModelConfig, lora: LoraSpec, mesh: Mesh, seed: int) -> dict:
    """A LoRA run's frozen base initialised at random, held and placed as a run holds a pretrained one."""
    where = shardings_of(abstract_frozen(cfg, lora, mesh))
    init = jax.jit(lambda: lora_base.frozen(nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(seed)))), lora.base_dtype),
                   out_shardings=where)
    return init()


class JaxBench:
    """The project's train step on one device, compiled ahead so compile time is its own number. With
    `config.lora.rank` > 0 it is a LoRA run's step: adapters on a frozen base initialised at random (built
    as `aot` shapes it, with real arrays), the base held as `lora.base_dtype` says."""

    def __init__(self, config: ml_collections.ConfigDict, cfg: ModelConfig, batch: dict, total_steps: int):
        device = jax.devices()[0]
        self.mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, [device])
        self.lora = aot_lora(config, cfg)
        optimizer = optim.make_optimizer(config.optim, total_steps, trained_dtype(cfg, self.lora))
        schedule = optim.learning_rate(config.optim, total_steps)
        self.frozen: tuple = ()
        if self.lora is None:
            self.state = init_state(cfg, optimizer, self.mesh, config.seed)
        else:
            self.frozen = (random_frozen_base(cfg, self.lora, self.mesh, config.seed),)
            adapters = init_adapters(cfg, self.lora, self.mesh, config.seed, self.frozen[0])
            self.state = state_from_params(adapters, optimizer, cfg, self.mesh, self.lora)
        step = jit_train_step(config, cfg, optimizer, schedule, self.mesh, self.lora, shardings_of(self.frozen[0]) if self.frozen else None)
        shardings = batch_shardings(self.mesh)
        self.batch = {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}
        jax.block_until_ready((self.state, self.batch, self.frozen))
        start = time.perf_counter()
        self.step_fn = step.lower(self.state, self.batch, *self.frozen).compile()
        self.compile_s = time.perf_counter() - start
        self.loss = float("nan")

    def step(self) -> float:
        start = time.perf_counter()
        self.state, metrics = self.step_fn(self.state, self.batch, *self.frozen)
        jax.block_until_ready((self.state, metrics))
        seconds = time.perf_counter() - start
        self.loss = float(metrics["loss"])
        return seconds


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_compare_torch(asked: bool | None, device: jax.Device) -> bool:
    """--compare_torch: by default on a CPU when torch imports; asked for without torch, an error."""
    if asked is None:
        return device.platform == "cpu" and torch_available()
    if asked and not torch_available():
        raise LimaError("--compare_torch needs torch and transformers: pip install torch transformers")
    return asked


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class TorchBench:
    """transformers.LlamaForCausalLM at the same shapes: fp32, AdamW with the same hyperparameters
    (decay off for norm scales, the same linear schedule, clipping when configured)."""

    def __init__(self, config: ml_collections.ConfigDict, cfg: ModelConfig, batch: dict, total_steps: int, attention: str):
        import torch
        import transformers

        self.torch = torch
        self.threads = cpu_cores()
        torch.set_num_threads(self.threads)
        torch.manual_seed(config.seed)
        hf = transformers.LlamaConfig(**{
            **config_to_hf(cfg, "float32"),
            "max_position_embeddings": max(cfg.max_len, batch["tokens"].shape[1]),
            "initializer_range": cfg.init_std,
            "attn_implementation": "eager" if attention == "auto" else attention,
        })
        self.model = transformers.LlamaForCausalLM(hf).to(torch.float32).train()
        self.attention = hf._attn_implementation  # noqa: SLF001
        o = config.optim
        decay = [p for n, p in self.model.named_parameters() if "norm" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if "norm" in n]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=(o.b1, o.b2), eps=o.eps,
        )
        span = max(total_steps - 1, 1)
        ratio = o.end_lr / o.lr if o.lr else 1.0
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0 + (ratio - 1.0) * min(s, span) / span)
        self.grad_clip = o.grad_clip
        self.tokens = torch.as_tensor(batch["tokens"], dtype=torch.long)
        self.targets = torch.as_tensor(batch["targets"], dtype=torch.long)
        self.vocab = cfg.vocab_size
        self.loss = float("nan")

    def set_attention(self, name: str) -> None:
        self.model.set_attn_implementation(name)
        self.attention = name

    def step(self) -> float:
        torch = self.torch
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(input_ids=self.tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, self.vocab).float(), self.targets.reshape(-1))
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()
        self.loss = loss.item()  # waits for the step
        return time.perf_counter() - start


def _measured(step: Callable[[], float]) -> tuple[float, float]:
    """(Wall seconds, process CPU seconds) of one step. CPU time sums every thread of the process:
    XLA's and torch's thread pools, and whoever else's work slowed the wall clock does not count."""
    cpu = time.process_time()
    wall = step()
    return wall, time.process_time() - cpu


def paired_rounds(
    runners: list[Callable[[], float]], rounds: int, probe: Callable[[], float] | None = None,
) -> tuple[list[list[tuple[float, float]]], list[float]]:
    """Each round runs one step of every runner, back to back, so a round's steps see the same
    machine; the order reverses every other round (ours, torch; torch, ours; ...) so neither always
    runs first. With a `probe` (the matmul peak) it is measured before every round and after the
    last, around the steps it divides. Returns each runner's (wall, cpu) seconds per round, and the
    probe's readings."""
    samples: list[list[tuple[float, float]]] = [[] for _ in runners]
    peaks: list[float] = []
    for r in range(rounds):
        if probe is not None:
            peaks.append(probe())
        order = range(len(runners)) if r % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            samples[i].append(_measured(runners[i]))
    if probe is not None:
        peaks.append(probe())
    return samples, peaks


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and extremes: what a noisy measurement is reported with."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"median": median, "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def _rel_iqr(values: list[float]) -> float:
    s = spread(values)
    return (s["q3"] - s["q1"]) / s["median"]


def _timing_fields(prefix: str, samples: list[tuple[float, float]], tokens_per_step: int) -> dict[str, Any]:
    """Step wall time (median, quartiles, fastest), tokens/s, CPU seconds per token and cores busy."""
    wall = [w for w, _ in samples]
    cpu = [c for _, c in samples]
    s = spread(wall)
    return {
        f"{prefix}step_s": _sig(s["median"]),
        f"{prefix}step_s_min": _sig(s["min"]),
        f"{prefix}step_s_iqr": [_sig(s["q1"]), _sig(s["q3"])],
        f"{prefix}tokens_per_s": _sig(tokens_per_step / s["median"]),
        f"{prefix}cpu_s_per_token": _sig(statistics.median(cpu) / tokens_per_step),
        f"{prefix}cpu_cores_busy": _sig(statistics.median(c / w for w, c in samples), 3),
    }


def bench(
    config: ml_collections.ConfigDict,
    *,
    seq_len: int = 512,
    batch_size: int = 4,
    steps: int = 7,
    warmup: int = 1,
    compare_torch: bool | None = None,
    torch_attention: str = "auto",
    seed: int = 0,
    shape: str = "none",
) -> dict:
    """Benchmarks the train step (and torch's) in `steps` paired rounds; returns the JSON record."""
    prepare(config)
    _check_args(config, seq_len, batch_size, steps, warmup, torch_attention)
    device = jax.devices()[0]
    lora = config.get("lora") is not None and config.lora.rank > 0
    if lora and compare_torch:
        raise LimaError("--compare_torch times a full fine-tune: leave it off with config key lora.rank > 0")
    compare_torch = False if lora else resolve_compare_torch(compare_torch, device)
    load_before = os.getloadavg()

    cfg = model_config(config)
    batch = random_batch(cfg, batch_size, seq_len, seed)
    total_steps = warmup + steps + (2 if compare_torch else 0) + 1
    tokens_per_step = batch_size * seq_len
    fixed = flops.fixed_peak_tflops(device, config.peak_tflops)
    probe = None if fixed else flops.fastest_matmul_probe()
    ours = JaxBench(config, cfg, batch, total_steps)
    say(f"bench: compiled the train step in {ours.compile_s:.1f}s")
    first_step_s = ours.step()
    for _ in range(max(warmup - 1, 0)):
        ours.step()
    theirs, attention_probe = _warmed_torch(config, cfg, batch, total_steps, torch_attention, warmup) if compare_torch else (None, {})

    samples, peaks = paired_rounds([ours.step] + ([theirs.step] if theirs else []), steps, probe)
    peak, peak_source = _peak(fixed, probe, peaks)
    flops_per_token = flops.train_flops_per_token(cfg, seq_len, frozen=ours.lora is not None)
    record: dict[str, Any] = {
        **model_fields(config, cfg, device, shape),
        "mode": "train",
        "seq_len": seq_len,
        "batch_size": batch_size,
        "tokens_per_step": tokens_per_step,
        **_step_fields(config, cfg, ours),
        "steps": steps,
        "warmup": warmup,
        "compile_s": _sig(ours.compile_s, 4),
        "first_step_s": _sig(first_step_s, 4),
        **_speed_fields(samples[0], tokens_per_step, flops_per_token, peak, peak_source),
        "loss": _sig(ours.loss),
    }
    if peaks:
        record["peak_tflops_range"] = [_sig(min(peaks)), _sig(max(peaks))]
    if theirs is not None:
        record.update(_torch_fields(theirs, attention_probe, samples, tokens_per_step, flops_per_token, peak))
    record["noise"] = _noise(samples, peaks, peak, load_before)
    record["noise_note"] = noise_note(record)
    if not all(math.isfinite(v) for v in (record["loss"], record.get("torch_loss", 0.0))):
        say("bench: warning: a non-finite loss")
    return record


def _peak(fixed: tuple[float, str] | None, probe: Any, peaks: list[float]) -> tuple[float, str]:
    """The TFLOP/s MFU divides by, and where it comes from: the probes' median when there was a probe."""
    if probe is None:
        return fixed
    return statistics.median(peaks), f"measured fp32 matmul ({probe.size}^3), median of {len(peaks)} probes between the rounds"


def _noise(samples: list[list[tuple[float, float]]], peaks: list[float], peak: float,
           load_before: tuple[float, float, float]) -> dict[str, Any]:
    """How much the step times and the peak varied, and how busy the host was before and after."""
    noise = {"step_s_rel_iqr": _sig(_rel_iqr([w for w, _ in samples[0]]), 3),
             "load_average_1m": [_sig(load_before[0], 3), _sig(os.getloadavg()[0], 3)], "cores": cpu_cores()}
    if peaks:
        noise["peak_rel_range"] = _sig((max(peaks) - min(peaks)) / peak, 3)
    if len(samples) > 1:
        noise["torch_step_s_rel_iqr"] = _sig(_rel_iqr([w for w, _ in samples[1]]), 3)
    return noise


def _check_args(config: ml_collections.ConfigDict, seq_len: int, batch_size: int, steps: int, warmup: int,
                torch_attention: str) -> None:
    if seq_len <= 0 or batch_size <= 0 or steps <= 0 or warmup < 0:
        raise LimaError(f"--seq_len, --batch_size and --steps must be positive, --warmup >= 0 (got {seq_len}, {batch_size}, {steps}, {warmup})")
    if config.grad_accum < 1 or batch_size % config.grad_accum:
        raise LimaError(f"config key grad_accum: {config.grad_accum} does not divide --batch_size={batch_size}")
    if torch_attention not in TORCH_ATTENTION:
        raise LimaError(f"--torch_attention {torch_attention!r}: expected one of {', '.join(TORCH_ATTENTION)}")


def _warmed_torch(config: ml_collections.ConfigDict, cfg: ModelConfig, batch: dict, total_steps: int,
                  torch_attention: str, warmup: int) -> tuple[TorchBench, dict[str, float]]:
    """torch's step, warmed up with each attention on trial ("auto": eager and sdpa, the faster kept),
    and the trial step's seconds of each."""
    theirs = TorchBench(config, cfg, batch, total_steps, torch_attention)
    candidates = ["eager", "sdpa"] if torch_attention == "auto" else [torch_attention]
    attention_probe: dict[str, float] = {}
    for name in candidates:
        theirs.set_attention(name)
        for _ in range(max(warmup, 1)):
            theirs.step()
        if len(candidates) > 1:
            attention_probe[name] = theirs.step()
    if attention_probe:
        theirs.set_attention(min(attention_probe, key=attention_probe.get))
    say(f"bench: torch attention {theirs.attention} ({', '.join(f'{k} {v:.2f}s' for k, v in attention_probe.items()) or 'as asked'})")
    return theirs, attention_probe


def _step_fields(config: ml_collections.ConfigDict, cfg: ModelConfig, ours: JaxBench) -> dict[str, Any]:
    """What the timed step computes: remat, layer scan, dropout, accumulation, LoRA and trained size."""
    return {
        "remat": cfg.remat,
        "scan_layers": cfg.scan_layers,
        "residual_dropout": cfg.residual_dropout,
        "grad_accum": config.grad_accum,
        "lora_rank": 0 if ours.lora is None else ours.lora.rank,
        "trained_params": sum(a.size for a in jax.tree.leaves(ours.state.params)),
    }


def _speed_fields(samples: list[tuple[float, float]], tokens_per_step: int, flops_per_token: float, peak: float,
                  peak_source: str) -> dict[str, Any]:
    """Our step's timing, tokens/s, TFLOP/s and MFU against `peak`."""
    timing = _timing_fields("", samples, tokens_per_step)
    timing["train_tokens_per_s"] = timing.pop("tokens_per_s")
    tflops = flops_per_token * timing["train_tokens_per_s"] / 1e12
    return {
        **timing,
        "flops_per_token": flops_per_token,  # PaLM's model FLOPs: the input embedding is a gather
        "tflops": _sig(tflops),
        "peak_tflops": _sig(peak),
        "peak_source": peak_source,
        "mfu": _sig(tflops / peak),
    }


def _torch_fields(theirs: TorchBench, attention_probe: dict[str, float], samples: list[list[tuple[float, float]]],
                  tokens_per_step: int, flops_per_token: float, peak: float) -> dict[str, Any]:
    """torch's timing and MFU, and the speedup over it: the median of the rounds' ratios."""
    import torch
    import transformers

    theirs_timing = _timing_fields("torch_", samples[1], tokens_per_step)
    ratios = spread([t[0] / o[0] for o, t in zip(samples[0], samples[1])])
    cpu_ratio = statistics.median(t[1] / o[1] for o, t in zip(samples[0], samples[1]))
    torch_tflops = flops_per_token * theirs_timing["torch_tokens_per_s"] / 1e12
    return {
        "torch_attention": theirs.attention,
        "torch_attention_probe_s": {k: _sig(v, 4) for k, v in attention_probe.items()},
        "torch_threads": theirs.threads,
        **theirs_timing,
        "torch_tflops": _sig(torch_tflops),
        "torch_mfu": _sig(torch_tflops / peak),
        "torch_loss": _sig(theirs.loss),
        # Each round's torch step time over ours, then the median: robust to a machine whose speed drifts.
        "speedup_vs_torch": _sig(ratios["median"]),
        "speedup_vs_torch_iqr": [_sig(ratios["q1"]), _sig(ratios["q3"])],
        "speedup_vs_torch_range": [_sig(ratios["min"]), _sig(ratios["max"])],
        # The same in CPU seconds: what each framework's threads spent, however busy the host.
        "cpu_speedup_vs_torch": _sig(cpu_ratio),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


def noise_note(record: dict[str, Any]) -> str:
    """One sentence on how far to trust the record's numbers."""
    noise = record["noise"]
    parts = [f"{record['steps']} paired rounds; our step time varied {100 * noise['step_s_rel_iqr']:.0f}% (IQR/median)"]
    if "torch_step_s_rel_iqr" in noise:
        lo, hi = record["speedup_vs_torch_iqr"]
        parts.append(f"torch's {100 * noise['torch_step_s_rel_iqr']:.0f}%; the per-round ratio to torch "
                     f"{record['speedup_vs_torch']:.2f}x, IQR {lo:.2f}-{hi:.2f}x, range "
                     "{:.2f}-{:.2f}x".format(*record["speedup_vs_torch_range"]))
    if "peak_rel_range" in noise:
        parts.append(f"the matmul peak moved {100 * noise['peak_rel_range']:.0f}% (range/median) between rounds")
    load = noise["load_average_1m"]
    parts.append(f"load average {load[0]:.1f} then {load[1]:.1f} on {noise['cores']} cores")
    return "; ".join(parts)


def model_fields(config: ml_collections.ConfigDict, cfg: ModelConfig, device: jax.Device, shape: str) -> dict[str, Any]:
    """What every record says about the model and the machine."""
    return {
        "config": config.name,
        "shape": shape,
        "device": str(device.device_kind),
        "platform": device.platform,
        "devices_used": 1,
        "dim": cfg.dim,
        "num_layers": cfg.num_layers,
        "num_heads": cfg.num_heads,
        "num_kv_heads": cfg.num_kv_heads,
        "ffn_dim": cfg.ffn_dim,
        "vocab_size": cfg.vocab_size,
        "params": param_count(cfg),
        "dtype": cfg.dtype,
        "param_dtype": cfg.param_dtype,
        "jax_version": jax.__version__,
    }


def decode_bench(
    config: ml_collections.ConfigDict,
    *,
    batches: tuple[int, ...] = (1, 16),
    prompt_len: int = 16,
    new_tokens: int = 128,
    repeats: int = 3,
    compare_torch: bool | None = None,
    seed: int = 0,
    shape: str = "none",
    compile_layers: tuple[int, ...] = (),
) -> dict:
    """Benchmarks the sampler (and transformers' generate); returns the JSON record."""
    prepare(config)
    device = jax.devices()[0]
    compare_torch = resolve_compare_torch(compare_torch, device)
    cfg = model_config(config)
    found = bench_decode.bench_decode(
        cfg, batches=batches, prompt_len=prompt_len, new_tokens=new_tokens, repeats=repeats,
        compare_torch=compare_torch, threads=cpu_cores(), seed=seed, compile_layers=compile_layers,
    )
    record = {**model_fields(config, cfg, device, shape), "mode": "decode"}
    record.update({k: _sig(v) if isinstance(v, float) else v for k, v in found.items()})
    if "decode_compile_s" in record:
        record["decode_compile_s"] = {k: _sig(v, 4) for k, v in record["decode_compile_s"].items()}
    if compare_torch:
        import torch
        import transformers

        record.update({"torch_threads": cpu_cores(), "torch_version": torch.__version__, "transformers_version": transformers.__version__})
    return record


def parse_batches(values: list[str], flag: str = "--decode_batches") -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise LimaError(f"{flag}: {','.join(values)!r} is not a list of integers") from None


def explicit_overrides(argv: list[str], name: str = "config") -> set[str]:
    """The config keys a command line sets (`--config.a.b=value`), which a named shape must not undo."""
    return set(override_keys(argv, name))
