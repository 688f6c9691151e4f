"""Throughput and latency of the OpenAI-compatible server under concurrent clients.

    python -m lima_jax.bench --mode=serve --config=tiny --shape=ci
    python -m lima_jax.bench --mode=serve --checkpoint=CKPT

The server (`lima_jax.serve`: the engine and the Starlette app under uvicorn) runs on 127.0.0.1 in
this process, serving `--checkpoint` or, without one, a random model of the config saved with the demo
tokenizer. For each concurrency c, c client threads each send `requests` non-streaming
`/v1/completions` requests one after another: a random prompt of `prompt_len` token ids, `new_tokens`
to generate, LIMA's sampling (the fields left out), a seed of its own. A random model rarely emits
its stop token, so answers run to `new_tokens`; `output_tokens_per_s` counts what the server
reports in `usage`. Before the timed requests, one untimed round at that concurrency.

- `requests_per_s_cC`: requests answered / wall time from the first request sent to the last answer;
- `output_tokens_per_s_cC`: completion tokens / that wall time;
- `latency_p50_s_cC`, `latency_p95_s_cC`: a request's time from sending to its whole answer;
- `rows_per_batch_cC`: how many requests the engine decoded together, on average;
- `sampler_tokens_per_s_bB`: the sampler alone (`generate`, no server) on B of the same requests at
  once, measured in the same run, and `serve_over_sampler_c1` / `_c16`: what the server keeps of it.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import urllib.request
from typing import Any, Sequence

import numpy as np

from lima_jax.errors import LimaError, say


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as r:
        return json.loads(r.read())


def _round(url: str, model: str, prompts: list[list[int]], clients: int, new_tokens: int, seed: int
           ) -> tuple[float, list[float], int]:
    """`clients` threads share the prompts, each sending its next one when its last is answered;
    returns the wall time, each request's latency and the completion tokens."""
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    todo = list(enumerate(prompts))
    errors: list[str] = []

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i, prompt = todo.pop()
            start = time.perf_counter()
            try:
                answer = _post(url, {"model": model, "prompt": prompt, "max_tokens": new_tokens, "seed": seed + i})
            except Exception as e:  # noqa: BLE001 - reported after the round
                errors.append(f"{type(e).__name__}: {e}")
                return
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens[0] += answer["usage"]["completion_tokens"]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise LimaError(f"bench: a request to the server failed: {errors[0]}")
    return time.perf_counter() - start, latencies, tokens[0]


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_serve(
    checkpoint: str,
    *,
    concurrency: Sequence[int] = (1, 4, 16),
    requests: int = 4,
    prompt_len: int = 16,
    new_tokens: int = 128,
    seed: int = 0,
) -> dict[str, Any]:
    """Serves `checkpoint` on a free port of 127.0.0.1 and times clients against it; the record's keys."""
    import socket

    from lima_jax.inference.generator import Generator
    from lima_jax.inference.sampler import SamplingParams
    from lima_jax.serve.app import make_app
    from lima_jax.serve.connections import serve_in_thread, server_config
    from lima_jax.serve.batching import Engine, prompt_widths
    from lima_jax.serve.protocol import Limits

    if not concurrency or min(concurrency) < 1 or requests < 1 or prompt_len < 1 or new_tokens < 1:
        raise LimaError(f"--concurrency, --requests, --prompt_len and --new_tokens must be positive (got "
                        f"{list(concurrency)}, {requests}, {prompt_len}, {new_tokens})")
    generator = Generator(checkpoint)
    if generator.tokenizer is None:
        raise LimaError(f"{checkpoint} has no tokenizer: the server needs one")
    context = generator.model.cfg.max_len
    if prompt_len + new_tokens > context:
        raise LimaError(f"--prompt_len + --new_tokens = {prompt_len + new_tokens} exceeds the model's context {context}")
    sizes = (1, 4, 16)
    width = next(w for w in prompt_widths(context) if w >= prompt_len)  # the one prompt width the bench uses
    engine = Engine(generator, batch_sizes=sizes, widths=[width], max_tokens=new_tokens, max_logprobs=None)
    start = time.perf_counter()
    engine.warm_up()
    compile_s, warm = time.perf_counter() - start, engine.compiled
    engine.start()
    limits = Limits(model="bench", context=context, max_tokens=new_tokens, max_n=sizes[-1], max_logprobs=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve_in_thread(server_config(make_app(generator, engine, limits), "127.0.0.1", port))
    url = f"http://127.0.0.1:{port}/v1/completions"
    rng = np.random.default_rng(seed)
    vocab = min(generator.model.cfg.used_vocab_size, generator.tokenizer.vocab_size)
    record: dict[str, Any] = {"mode": "serve", "prompt_len": prompt_len, "new_tokens": new_tokens,
                              "requests_per_client": requests, "batch_sizes": list(sizes),
                              "compile_s": round(compile_s, 2)}
    try:
        for c in concurrency:
            prompts = rng.integers(3, vocab, (c * (requests + 1), prompt_len)).tolist()
            _round(url, "bench", prompts[:c], c, new_tokens, seed)  # untimed: the clients' first round
            batches = engine.stats["batches"]
            wall, latencies, tokens = _round(url, "bench", prompts[c:], c, new_tokens, seed)
            record.update({
                f"requests_per_s_c{c}": round(len(latencies) / wall, 3),
                f"output_tokens_per_s_c{c}": round(tokens / wall, 1),
                f"latency_p50_s_c{c}": round(statistics.median(latencies), 3),
                f"latency_p95_s_c{c}": round(_percentile(latencies, 95), 3),
                f"rows_per_batch_c{c}": round(len(latencies) / max(1, engine.stats["batches"] - batches), 2),
            })
            say(f"bench: {c} concurrent clients: {record[f'requests_per_s_c{c}']} requests/s, "
                f"{record[f'output_tokens_per_s_c{c}']} output tokens/s")
    finally:
        server.should_exit = True
        engine.stop()
    record["compiled_after_warm_up"] = engine.compiled - warm
    params = SamplingParams(max_new_tokens=new_tokens)
    for b in (1, 16):  # the same work without the server, for scale on a machine whose speed drifts
        prompts = rng.integers(3, vocab, (b, prompt_len)).tolist()
        generator(prompts, params, seed)  # compiles
        start = time.perf_counter()
        tokens = sum(len(t) for t in generator(prompts, params, seed))
        record[f"sampler_tokens_per_s_b{b}"] = round(tokens / (time.perf_counter() - start), 1)
        if b in concurrency:
            record[f"serve_over_sampler_c{b}"] = round(record[f"output_tokens_per_s_c{b}"] / record[f"sampler_tokens_per_s_b{b}"], 3)
    return record


def random_checkpoint(cfg, seed: int, directory: str) -> str:
    """A random model of `cfg` saved with the demo tokenizer (a base model: no EOT), for the bench."""
    from flax import nnx

    from lima_jax.data import demo_dir
    from lima_jax.model import Llama
    from lima_jax.weights import checkpoint

    params = nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(seed))))
    return str(checkpoint.save(f"{directory}/model", params, cfg, tokenizer=demo_dir() / "tokenizer.model"))


def serve_bench_record(config, checkpoint: str | None, shape: str, **kwargs) -> dict[str, Any]:
    """`bench_serve` on `checkpoint`, or on a random model of `config` in a temporary directory; with
    what every bench record says about the model and the machine."""
    import jax

    from lima_jax.bench.train import model_fields
    from lima_jax.config import model_config, prepare
    from lima_jax.weights.checkpoint import load_model_config

    if checkpoint:
        cfg = load_model_config(checkpoint)
        record = bench_serve(checkpoint, **kwargs)
    else:
        prepare(config)
        cfg = model_config(config)
        with tempfile.TemporaryDirectory() as tmp:
            record = bench_serve(random_checkpoint(cfg, kwargs.get("seed", 0), tmp), **kwargs)
    fields = model_fields(config, cfg, jax.devices()[0], shape) if config is not None else {}
    return {**fields, "checkpoint": checkpoint, **record}
