"""Serve a checkpoint over OpenAI's API, so that tools which talk to an OpenAI endpoint (AlpacaEval,
MT-Bench, lm-evaluation-harness, the `openai` client) can use it.

    python -m lima_jax.serve --checkpoint=runs/tiny [--host=127.0.0.1] [--port=8000] [--mesh=fsdp=4]

Then `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions` (streaming or not) at
http://127.0.0.1:8000/v1; a greedy or seeded answer equals `lima_jax.sample`'s for the same
conversation and seed. Without `--api_key_env` only local requests are served (`serve.guards`). Every
program is compiled ahead without being run: before the port opens, and those of long prompt widths
after it on a thread of their own, while requests are served. The README's "Serving" section lists the fields, limits and flags."""
from __future__ import annotations

import os

from absl import flags

from lima_jax.cli import define_dtype_flag, define_mesh_flag, no_arguments, run
from lima_jax.log import say
from lima_jax.errors import LimaError

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a checkpoint, a step directory, or a run's workdir")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "the address to bind (0.0.0.0: every interface)")
_PORT = flags.DEFINE_integer("port", 8000, "the port to listen on")
_MESH = define_mesh_flag()
_DTYPE = define_dtype_flag()
_MODEL_NAME = flags.DEFINE_string("model_name", None, "the model's name in the API (default: the checkpoint folder's "
                                  "name; requests may also name --checkpoint as given)")
_API_KEY_ENV = flags.DEFINE_string("api_key_env", None, "an environment variable holding the key clients must send "
                                   "as 'Authorization: Bearer KEY' (default: no key)")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 2048, "new tokens per answer at most (capped by the served context)")
_MAX_LEN = flags.DEFINE_integer("max_len", 0, "the served context, prompt and answer, in tokens (at most the model's); "
                                "0: the longest whose prefill of a full batch fits this host's free memory")
_BACKGROUND_ABOVE = flags.DEFINE_integer("background_compile_above", 1024, "programs for prompts longer than this many "
                                         "tokens compile in the background once the port is open; -1: all before")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "4", "16"], "the compiled batch sizes; the largest is how many "
                                 "sequences decode together")
_CHUNK_STEPS = flags.DEFINE_integer("chunk_steps", 16, "decode steps between two looks at the batch (streaming, stop "
                                    "strings, clients gone)")
_MAX_LOGPROBS = flags.DEFINE_integer("max_logprobs", 20, "top_logprobs at most (the decode programs keep this many "
                                     "log-probabilities a step); -1: no log-probabilities, smaller decode state")
_BATCH_WAIT_MS = flags.DEFINE_float("batch_wait_ms", 10.0, "how long a batch waits for more requests before it starts")
_MAX_REQUEST_BYTES = flags.DEFINE_integer("max_request_bytes", 4 * 2**20, "a request body at most (larger ones get "
                                          "a 413 before they are read whole)")
_MAX_CONNECTIONS = flags.DEFINE_integer("max_connections", 256, "open connections at most; a request past them gets "
                                        "a 503")
_READ_TIMEOUT_S = flags.DEFINE_float("read_timeout_s", 30.0, "seconds a request's headers and body may take to arrive; "
                                     "a connection slower than that is closed")
_ALLOWED_HOSTS = flags.DEFINE_list("allowed_hosts", [], "without a key, the host names served besides localhost and "
                                   "IP addresses (a request's Host header)")
_ALLOWED_ORIGINS = flags.DEFINE_list("allowed_origins", [], "without a key, the web origins served besides loopback "
                                     "ones (e.g. http://myapp.example:3000)")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not _CHECKPOINT.value:
        raise LimaError("--checkpoint is required")
    try:
        sizes = sorted({int(b) for b in _BATCH_SIZES.value})
    except ValueError:
        raise LimaError(f"--batch_sizes: {','.join(_BATCH_SIZES.value)} is not a list of integers") from None
    if not sizes or sizes[0] < 1 or _CHUNK_STEPS.value < 1 or _MAX_TOKENS.value < 1 or _BATCH_WAIT_MS.value < 0:
        raise LimaError("--batch_sizes, --chunk_steps and --max_tokens must be positive, --batch_wait_ms >= 0")
    if not 1 <= _PORT.value <= 65535:
        raise LimaError(f"--port={_PORT.value}: a TCP port is between 1 and 65535")
    if _MAX_CONNECTIONS.value < 1 or _MAX_REQUEST_BYTES.value < 1 or not _READ_TIMEOUT_S.value > 0:
        raise LimaError("--max_connections, --max_request_bytes and --read_timeout_s must be positive")
    api_key = None
    if _API_KEY_ENV.value:
        api_key = os.environ.get(_API_KEY_ENV.value)
        if not api_key:
            raise LimaError(f"--api_key_env={_API_KEY_ENV.value}: that environment variable is not set or empty")

    import jax
    import uvicorn

    from lima_jax.inference.generator import Generator, parse_mesh
    from lima_jax.serve.app import make_app
    from lima_jax.serve.batching import Engine, prompt_widths
    from lima_jax.serve.connections import server_config
    from lima_jax.serve.guards import is_loopback
    from lima_jax.serve.protocol import Limits, served_name

    if not api_key and not is_loopback(_HOST.value):
        say(f"warning: --host={_HOST.value} without --api_key_env: anyone who can reach this port can use the model "
            "(requests must name localhost or an IP address; see the README's Security paragraph)")

    if jax.process_count() > 1:
        raise LimaError("serve runs in one process (--mesh over its own devices); a multi-host slice is not supported yet")
    generator = Generator(_CHECKPOINT.value, parse_mesh(_MESH.value), _DTYPE.value)
    if generator.tokenizer is None:
        raise LimaError(f"{_CHECKPOINT.value} has no tokenizer: the server needs one (convert with --tokenizer)")
    context = _served_context(generator.model.cfg, sizes[-1])
    max_logprobs = None if _MAX_LOGPROBS.value < 0 else _MAX_LOGPROBS.value
    limits = Limits(model=_MODEL_NAME.value or served_name(_CHECKPOINT.value), context=context,
                    max_tokens=min(_MAX_TOKENS.value, context - 1), max_n=sizes[-1], max_logprobs=max_logprobs,
                    max_request_bytes=_MAX_REQUEST_BYTES.value, aliases=(_CHECKPOINT.value,))
    widths = prompt_widths(context)
    engine = Engine(generator, batch_sizes=sizes, widths=widths, max_tokens=limits.max_tokens,
                    chunk_steps=_CHUNK_STEPS.value, batch_wait_s=_BATCH_WAIT_MS.value / 1000, max_logprobs=max_logprobs)
    above = _BACKGROUND_ABOVE.value
    engine.warm_up(before_serving=None if above < 0 else sum(w <= above for w in widths))
    engine.start()
    app = make_app(generator, engine, limits, api_key=api_key, allowed_hosts=_ALLOWED_HOSTS.value,
                   allowed_origins=_ALLOWED_ORIGINS.value)
    config = server_config(app, _HOST.value, _PORT.value, max_connections=_MAX_CONNECTIONS.value,
                           read_timeout_s=_READ_TIMEOUT_S.value)
    say(f"serve: {limits.model} at http://{_HOST.value}:{_PORT.value}/v1" + (" (bearer key required)" if api_key else ""))
    try:
        uvicorn.Server(config).run()
    finally:
        engine.stop()


def _served_context(cfg, rows: int) -> int:
    """--max_len, checked; by default the longest prompt width whose prefill of `rows` prompts fits the
    free memory, said when it is shorter than the model's context."""
    import jax

    from lima_jax.serve.batching import prompt_widths
    from lima_jax.serve.context import fitting_context, free_bytes, prefill_bytes

    if _MAX_LEN.value:
        if not 2 <= _MAX_LEN.value <= cfg.max_len:
            raise LimaError(f"--max_len={_MAX_LEN.value}: the model's context is {cfg.max_len} tokens (2 at least)")
        return _MAX_LEN.value
    free = free_bytes(jax.devices()[0])
    context = fitting_context(cfg, rows, _MAX_TOKENS.value, prompt_widths(cfg.max_len), free)
    if context < cfg.max_len:
        need = prefill_bytes(cfg, rows, cfg.max_len, min(_MAX_TOKENS.value, cfg.max_len - 1))
        say(f"serve: serving {context} of the model's {cfg.max_len} context tokens: a batch of {rows} "
            f"{cfg.max_len}-token prompts would need about {need / 2**30:.1f} GiB, and {free / 2**30:.1f} GiB are "
            "free (--max_len chooses, --batch_sizes shrinks the batch)")
    return context


if __name__ == "__main__":
    run(main)
