"""Throughput and latency of the OpenAI-compatible server under concurrent clients.

    python -m lima_jax.bench --mode=serve --config=tiny --shape=ci
    python -m lima_jax.bench --mode=serve --checkpoint=CKPT

The server runs on 127.0.0.1 in this process (a random model of the config when no checkpoint is
given); for each concurrency, that many client threads send requests one after another, after one
untimed round. The sampler alone is timed on the same requests in the same run, so the record says
what the server keeps of it on a machine whose speed drifts. The keys are described in docs/bench.md."""
from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import urllib.request
from typing import Any, Sequence

import numpy as np

from lima_jax.errors import LimaError
from lima_jax.log import say

BATCH_SIZES = (1, 4, 16)  # the engine's: one client, a few, many


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
    from lima_jax.inference.generator import Generator
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
    engine, compile_s, warm = _warmed_engine(generator, prompt_len, new_tokens)
    engine.start()
    limits = Limits(model="bench", context=context, max_tokens=new_tokens, max_n=BATCH_SIZES[-1], max_logprobs=None)
    server, url = _served(generator, engine, limits)
    rng = np.random.default_rng(seed)
    vocab = min(generator.model.cfg.used_vocab_size, generator.tokenizer.vocab_size)
    record: dict[str, Any] = {"mode": "serve", "prompt_len": prompt_len, "new_tokens": new_tokens,
                              "requests_per_client": requests, "batch_sizes": list(BATCH_SIZES),
                              "compile_s": round(compile_s, 2)}
    try:
        for c in concurrency:
            prompts = rng.integers(3, vocab, (c * (requests + 1), prompt_len)).tolist()
            record.update(_clients_fields(url, engine, prompts, c, new_tokens, seed))
            say(f"bench: {c} concurrent clients: {record[f'requests_per_s_c{c}']} requests/s, "
                f"{record[f'output_tokens_per_s_c{c}']} output tokens/s")
    finally:
        server.should_exit = True
        engine.stop()
    record["compiled_after_warm_up"] = engine.compiled - warm
    for b in (1, 16):  # the same work without the server, for scale on a machine whose speed drifts
        record[f"sampler_tokens_per_s_b{b}"] = _sampler_rate(generator, rng.integers(3, vocab, (b, prompt_len)).tolist(),
                                                             new_tokens, seed)
        if b in concurrency:
            record[f"serve_over_sampler_c{b}"] = round(record[f"output_tokens_per_s_c{b}"] / record[f"sampler_tokens_per_s_b{b}"], 3)
    return record


def _warmed_engine(generator: Any, prompt_len: int, new_tokens: int) -> tuple[Any, float, int]:
    """The engine at the one prompt width the bench uses, warmed up: with its compile seconds and the
    programs it compiled."""
    from lima_jax.serve.batching import Engine, prompt_widths

    width = next(w for w in prompt_widths(generator.model.cfg.max_len) if w >= prompt_len)
    engine = Engine(generator, batch_sizes=BATCH_SIZES, widths=[width], max_tokens=new_tokens, max_logprobs=None)
    start = time.perf_counter()
    engine.warm_up()
    return engine, time.perf_counter() - start, engine.compiled


def _served(generator: Any, engine: Any, limits: Any) -> tuple[Any, str]:
    """The app under uvicorn on a free port of 127.0.0.1, and its completions URL."""
    import socket

    from lima_jax.serve.app import make_app
    from lima_jax.serve.connections import serve_in_thread, server_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve_in_thread(server_config(make_app(generator, engine, limits), "127.0.0.1", port))
    return server, f"http://127.0.0.1:{port}/v1/completions"


def _clients_fields(url: str, engine: Any, prompts: list[list[int]], c: int, new_tokens: int, seed: int) -> dict[str, Any]:
    """`c` clients: an untimed round on the first `c` prompts, then the timed requests on the rest."""
    _round(url, "bench", prompts[:c], c, new_tokens, seed)  # untimed: the clients' first round
    batches = engine.stats["batches"]
    wall, latencies, tokens = _round(url, "bench", prompts[c:], c, new_tokens, seed)
    return {
        f"requests_per_s_c{c}": round(len(latencies) / wall, 3),
        f"output_tokens_per_s_c{c}": round(tokens / wall, 1),
        f"latency_p50_s_c{c}": round(statistics.median(latencies), 3),
        f"latency_p95_s_c{c}": round(_percentile(latencies, 95), 3),
        f"rows_per_batch_c{c}": round(len(latencies) / max(1, engine.stats["batches"] - batches), 2),
    }


def _sampler_rate(generator: Any, prompts: list[list[int]], new_tokens: int, seed: int) -> float:
    """Tokens per second of `generate` on `prompts` at once (compiled first, untimed)."""
    from lima_jax.inference.sampler import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens)
    generator(prompts, params, seed)  # compiles
    start = time.perf_counter()
    tokens = sum(len(t) for t in generator(prompts, params, seed))
    return round(tokens / (time.perf_counter() - start), 1)


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
