"""Decode speed of the compiled sampler, side by side with `transformers` `generate`.

    python -m lima_jax.bench --mode=decode --config=tiny --shape=ci

Both frameworks decode greedily from the same weights and random prompts for a fixed number of new
tokens; each is timed generating N tokens and generating 1, in alternation, so the decode rate leaves
the prefill out. The roofline divides the bytes of weights a step reads by a memory bandwidth measured
in the same run. The record's keys are described in docs/bench.md."""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm
from flax import nnx

from lima_jax.errors import LimaError
from lima_jax.log import say
from lima_jax.model.flops import best_seconds
from lima_jax.weights.hf import config_to_hf
from lima_jax.model import ModelConfig, param_count
from lima_jax.model import Llama
from lima_jax.model.decode_layout import for_decoding
from lima_jax.inference.sampler import SamplingParams, generate
from lima_jax.weights.names import params_to_hf

# The buffer the bandwidth is measured on: larger than the last-level cache (a VM may report a
# socket's whole L3, e.g. 300 MiB, part of which a model's weights can then stay in between
# steps, so a roofline fraction near or above 1 means cache, not a faster memory).
BANDWIDTH_BYTES = 512 * 2**20


def measured_bandwidth(nbytes: int = BANDWIDTH_BYTES, repeats: int = 5) -> float:
    """Bytes per second a jitted reduction streams from device memory (the best of `repeats`)."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    return x.nbytes / best_seconds(jax.jit(jnp.sum), x, repeats)


def weight_bytes_per_step(cfg: ModelConfig) -> int:
    """Bytes of parameters one decode step reads: all but the input embedding (a gather of B
    rows), unless it doubles as the output head."""
    gathered = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim
    return (param_count(cfg) - gathered) * jnp.dtype(cfg.param_dtype).itemsize


# The width of the models whose decode compile time is measured: tiny, so that depth is what costs.
COMPILE_PROBE_WIDTH = {"dim": 64, "num_heads": 4, "num_kv_heads": 4, "ffn_dim": 128, "vocab_size": 256}


def decode_compile_seconds(cfg: ModelConfig, num_layers: int, new_tokens: int = 4) -> float:
    """Seconds to trace and compile greedy decoding for `cfg` at `num_layers` layers and tiny width:
    the first `generate` call (compiles, then runs) less a second one (runs)."""
    small = dataclasses.replace(cfg, num_layers=num_layers, **COMPILE_PROBE_WIDTH)
    decoder = JaxDecoder(for_decoding(Llama(small, rngs=nnx.Rngs(0))))
    prompts = random_prompts(small, 1, 4, 0)
    first, _ = decoder(prompts, new_tokens)
    again, _ = decoder(prompts, new_tokens)
    return max(first - again, 0.0)


def random_prompts(cfg: ModelConfig, batch: int, length: int, seed: int) -> np.ndarray:
    """Token ids in [3, vocab): clear of the usual BOS/EOS/PAD ids."""
    return np.random.default_rng(seed).integers(3, cfg.vocab_size, (batch, length), dtype=np.int64)


class JaxDecoder:
    """Our sampler, on the model as the Generator holds it (layers unstacked, projections fused)."""

    def __init__(self, model: Llama):
        self.model = model
        self.never = (model.cfg.vocab_size + 1,)  # a stop id no row produces: every row runs to N

    def __call__(self, prompts: np.ndarray, new_tokens: int, lima: bool = False) -> tuple[float, list[list[int]]]:
        params = SamplingParams(max_new_tokens=new_tokens) if lima else SamplingParams(temperature=0.0, max_new_tokens=new_tokens)
        start = time.perf_counter()
        out = generate(self.model, prompts.tolist(), params, stop_ids=self.never)
        return time.perf_counter() - start, out


class TorchDecoder:
    """`transformers.LlamaForCausalLM.generate` with our weights, in our compute dtype, one thread per core."""

    def __init__(self, cfg: ModelConfig, params: dict, threads: int):
        import torch
        import transformers

        self.torch = torch
        torch.set_num_threads(threads)
        dtype = getattr(torch, cfg.dtype)
        hf = transformers.LlamaConfig(**{**config_to_hf(cfg, cfg.dtype), "pad_token_id": 0})
        self.model = transformers.LlamaForCausalLM(hf).to(dtype).eval()
        state = {name: torch.from_numpy(np.array(w, np.float32)).to(dtype) for name, w in params_to_hf(params, cfg)}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if not m.endswith("rotary_emb.inv_freq")]:
            raise LimaError(f"bench: transformers rejected the converted weights (missing {missing}, unexpected {unexpected})")

    def __call__(self, prompts: np.ndarray, new_tokens: int, lima: bool = False) -> tuple[float, list[list[int]]]:
        torch = self.torch
        knobs = {"do_sample": True, "top_p": 0.9, "temperature": 0.7, "repetition_penalty": 1.2} if lima else {"do_sample": False}
        ids = torch.as_tensor(prompts)
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                eos_token_id=None, pad_token_id=0, **knobs,
            )
            seconds = time.perf_counter() - start
        return seconds, out[:, prompts.shape[1]:].tolist()


def _rates(times: dict[tuple, list[float]], batches: Sequence[int], new_tokens: int) -> dict[str, float]:
    """Decode rates with the prefill taken out: (b, N tokens) minus (b, 1 token), greedy and LIMA."""
    out = {"ttft_s": statistics.median(times[(batches[0], 1, False)])}
    for b in batches:
        first = statistics.median(times[(b, 1, False)])
        for lima, key in ((False, f"b{b}"), (True, f"lima_b{b}")):
            out[key] = b * (new_tokens - 1) / max(statistics.median(times[(b, new_tokens, lima)]) - first, 1e-9)
    return out


def _matching_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def bench_decode(
    cfg: ModelConfig,
    *,
    batches: Sequence[int] = (1, 16),
    prompt_len: int = 16,
    new_tokens: int = 128,
    repeats: int = 3,
    compare_torch: bool = False,
    threads: int = 1,
    seed: int = 0,
    compile_layers: Sequence[int] = (),
) -> dict[str, Any]:
    """Times our sampler (and transformers') at each batch size; returns the record's decode keys."""
    if new_tokens < 2 or prompt_len < 1 or repeats < 1 or not batches or min(batches) < 1:
        raise LimaError(f"--new_tokens must be >= 2, --prompt_len and --repeats >= 1, batch sizes >= 1 "
                        f"(got {new_tokens}, {prompt_len}, {repeats}, {list(batches)})")
    model = Llama(cfg, rngs=nnx.Rngs(seed))
    params = nnx.to_pure_dict(nnx.state(model)) if compare_torch else None
    theirs = TorchDecoder(cfg, jax.tree.map(np.asarray, params), threads) if compare_torch else None
    model = for_decoding(model)  # as the Generator lays it out on one device
    ours = JaxDecoder(model)
    runners: list[tuple[str, Callable]] = [("ours", ours)] + ([("torch", theirs)] if theirs else [])
    prompts = {b: random_prompts(cfg, b, prompt_len, seed + b) for b in batches}
    cases = [(b, n, lima) for b in batches for n, lima in ((new_tokens, False), (1, False), (new_tokens, True))]
    _warm_up(runners, cases, prompts)
    times, outputs = _timed(runners, cases, prompts, repeats, compared=(batches[0], new_tokens, False))
    bandwidth = measured_bandwidth()
    bytes_per_step = weight_bytes_per_step(cfg)

    mine = _rates(times["ours"], batches, new_tokens)
    record: dict[str, Any] = {
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "decode_batches": list(batches),
        "repeats": repeats,
        "ttft_s": mine["ttft_s"],
        **{f"decode_tokens_per_s_b{b}": mine[f"b{b}"] for b in batches},
        **{f"lima_sampling_tokens_per_s_b{b}": mine[f"lima_b{b}"] for b in batches},
        "weight_bytes_per_step": bytes_per_step,
        "memory_bandwidth_gb_s": bandwidth / 1e9,
        "roofline_tokens_per_s_b1": bandwidth / bytes_per_step,
    }
    b0 = batches[0]
    record["roofline_fraction"] = mine[f"b{b0}"] * bytes_per_step / bandwidth / b0
    if len(batches) > 1:
        record[f"b{batches[-1]}_over_b{b0}"] = mine[f"b{batches[-1]}"] / mine[f"b{b0}"]
    if compile_layers:
        record.update(_compile_fields(cfg, compile_layers))
    if theirs is not None:
        record.update(_torch_fields(mine, _rates(times["torch"], batches, new_tokens), batches, outputs))
    return record


def _warm_up(runners: list[tuple[str, Callable]], cases: list[tuple[int, int, bool]], prompts: dict) -> None:
    """Runs every case once: compiles each of our programs, and warms torch up."""
    start = time.perf_counter()
    with tqdm(total=len(cases) * len(runners), desc="bench: compiling", unit="program", leave=False) as bar:
        for b, n, lima in cases:
            for _, run in runners:
                run(prompts[b], n, lima)
                bar.update(1)
    say(f"bench: compiled and warmed up in {time.perf_counter() - start:.1f}s")


def _timed(runners: list[tuple[str, Callable]], cases: list[tuple[int, int, bool]], prompts: dict, repeats: int,
           compared: tuple[int, int, bool]) -> tuple[dict, dict[str, list[list[int]]]]:
    """Each runner's seconds per case and repeat, and its tokens of the `compared` case."""
    times = {name: {case: [] for case in cases} for name, _ in runners}
    outputs: dict[str, list[list[int]]] = {}
    with tqdm(total=repeats * len(cases) * len(runners), desc="bench: timing", unit="run") as bar:
        for _ in range(repeats):  # alternating, so every figure sees the same machine
            for b, n, lima in cases:
                for name, run in runners:
                    seconds, out = run(prompts[b], n, lima)
                    times[name][(b, n, lima)].append(seconds)
                    if (b, n, lima) == compared:
                        outputs[name] = out
                    bar.update(1)
    return times, outputs


def _compile_fields(cfg: ModelConfig, compile_layers: Sequence[int]) -> dict[str, Any]:
    """Seconds to compile greedy decoding at each depth, and the last depth's over the first's."""
    decode_compile_seconds(cfg, 1)  # untimed: whatever a first generate compiles besides the model
    seconds = {n: decode_compile_seconds(cfg, n) for n in compile_layers}
    first, last = compile_layers[0], compile_layers[-1]
    return {"decode_compile_s": {str(n): s for n, s in seconds.items()},
            f"decode_compile_{last}_over_{first}_layers": seconds[last] / max(seconds[first], 1e-9)}


def _torch_fields(mine: dict[str, float], torch_rates: dict[str, float], batches: Sequence[int],
                  outputs: dict[str, list[list[int]]]) -> dict[str, Any]:
    """transformers' rates, our speedup over them, and how many greedy tokens agree."""
    record: dict[str, Any] = {"torch_ttft_s": torch_rates["ttft_s"]}
    for b in batches:
        record[f"torch_decode_tokens_per_s_b{b}"] = torch_rates[f"b{b}"]
        record[f"decode_speedup_vs_torch_b{b}"] = mine[f"b{b}"] / torch_rates[f"b{b}"]
        record[f"torch_lima_sampling_tokens_per_s_b{b}"] = torch_rates[f"lima_b{b}"]
        record[f"lima_sampling_speedup_vs_torch_b{b}"] = mine[f"lima_b{b}"] / torch_rates[f"lima_b{b}"]
    # Greedy tokens agree until two logits tie within float error (random weights tie often).
    record["greedy_prefix_matching_torch"] = min(_matching_prefix(a, b) for a, b in zip(outputs["ours"], outputs["torch"]))
    return record
