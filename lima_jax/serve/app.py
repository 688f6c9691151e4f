"""The HTTP side: a Starlette app with OpenAI's routes over the engine.

    GET  /v1/models            the one model served
    POST /v1/chat/completions  LIMA's chat format (BOS, each turn followed by EOT)
    POST /v1/completions       plain text after BOS, or token ids as given
    GET  /health               200 once the programs are compiled
    GET  /metrics              counters of the engine (batches, sequences, padding rows, decode steps, cancelled)

Every error is OpenAI's JSON (`{"error": {"message", "type", "param", "code"}}`) with a 4xx status for
what the client sent and 500 for a failure of ours; the server keeps serving either way. With an API
key, every /v1 route wants `Authorization: Bearer KEY`.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from typing import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from lima_jax.inference.generator import Generator
from lima_jax.serve.batching import Engine, Choice, Update
from lima_jax.serve.protocol import ApiError, Limits, Request, Responses, parse

EOT_TEXT = "<eot>"  # LIMA's end-of-turn token has no piece of its own
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streaming request checks that its client is still there


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class BearerKey:
    """ASGI middleware: /v1 routes need `Authorization: Bearer KEY`."""

    def __init__(self, app: ASGIApp, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.key):
                e = ApiError(401, "Incorrect API key provided", code="invalid_api_key")
                await error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _body(http: HttpRequest, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to pass `limit` bytes (by its
    Content-Length, or while it arrives), so an oversized body is never held whole."""
    too_large = ApiError(413, f"the request body is larger than this server's limit of {limit} bytes (--max_request_bytes)")
    declared = http.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in http.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def make_app(generator: Generator, engine: Engine, limits: Limits, *, api_key: str | None = None) -> Starlette:
    tokenizer = generator.tokenizer
    vocab = generator.model.cfg.used_vocab_size

    def encode_text(text: str) -> list[int]:
        return tokenizer.encode_plain(text)

    def token_text(token: int) -> str:
        """A token as log-probabilities name it: the text it adds, its leading space included."""
        if token == generator.eot_id:
            return EOT_TEXT
        if 0 <= token < tokenizer.num_pieces:
            return tokenizer.token_text(token)
        return ""

    async def models(_: HttpRequest) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": limits.model, "object": "model", "created": started,
                                                          "owned_by": "lima_jax", "max_model_len": limits.context}]})

    async def health(_: HttpRequest) -> Response:
        return Response(status_code=200)

    async def metrics(_: HttpRequest) -> Response:
        """Prometheus' text format, as vLLM's /metrics: how requests were batched."""
        values = {**{f"{k}_total": v for k, v in engine.stats.items()}, "compiled_programs": engine.compiled,
                  "waiting_sequences": engine.waiting.qsize()}
        return PlainTextResponse("".join(f"lima_serve_{k} {v}\n" for k, v in values.items()))

    async def completions(http: HttpRequest, chat: bool) -> Response:
        try:
            body = json.loads(await _body(http, limits.max_request_bytes))
        except ApiError as e:
            return error_response(e)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error_response(ApiError(400, f"the request body is not valid JSON: {e}"))
        try:
            request = parse(body, limits, generator.encode, encode_text, chat=chat)
        except ApiError as e:
            return error_response(e)
        for p in request.prompts:
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                return error_response(ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})",
                                               param="prompt"))
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[tuple[int, Update]] = asyncio.Queue()
        sequences = [
            Choice(prompt, request.params, request.seed + j, request.stop,
                   lambda u, i=i * request.n + j: loop.call_soon_threadsafe(updates.put_nowait, (i, u)),
                   request.top_logprobs)
            for i, prompt in enumerate(request.prompts) for j in range(request.n)
        ]
        engine.submit(sequences)
        responses = Responses(limits.model, chat, token_text)
        if request.stream:
            return StreamingResponse(_stream(request, sequences, updates, responses), media_type="text/event-stream")
        return await _whole(http, request, sequences, updates, responses)

    async def chat_completions(http: HttpRequest) -> Response:
        return await completions(http, chat=True)

    async def text_completions(http: HttpRequest) -> Response:
        return await completions(http, chat=False)

    async def http_error(_: HttpRequest, e: HTTPException) -> Response:
        kind = "NotFoundError" if e.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(e.status_code, str(e.detail), kind=kind))

    async def server_error(_: HttpRequest, e: Exception) -> Response:
        return error_response(ApiError(500, f"{type(e).__name__}: {e}", kind="internal_server_error"))

    started = int(time.time())
    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", text_completions, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    middleware = [Middleware(BearerKey, key=api_key)] if api_key else []
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={HTTPException: http_error, Exception: server_error})


# uvicorn closes an idle kept-alive connection after 5 s by default; a client reusing it at that moment
# gets "Server disconnected without sending a response". Clients between batches idle longer than that.
KEEP_ALIVE_S = 75


def serve_in_thread(app: Starlette, host: str, port: int) -> uvicorn.Server:
    """The app served by uvicorn on a thread of this process (a benchmark's clients beside it); returns
    once it listens. `server.should_exit = True` stops it."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S))
    thread = threading.Thread(target=server.run, name="lima_jax.serve http", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.05)
    return server


def _usage(request: Request, tokens: list[int]) -> dict[str, int]:
    # Each prompt counts once, however many choices it has (as OpenAI counts n > 1).
    return Responses.usage(sum(len(p) for p in request.prompts), sum(tokens))


async def _whole(http: HttpRequest, request: Request, sequences: list[Choice],
                 updates: asyncio.Queue, responses: Responses) -> Response:
    texts, finishes, tokens = [""] * len(sequences), [""] * len(sequences), [0] * len(sequences)
    logprobs = [[] if request.top_logprobs is not None else None for _ in sequences]
    left = len(sequences)
    while left:
        try:
            i, u = await asyncio.wait_for(updates.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await http.is_disconnected():  # nobody will read the answer: free the rows
                for s in sequences:
                    s.cancelled = True
                return Response(status_code=499)
            continue
        if u.error:
            return error_response(ApiError(500, u.error, kind="internal_server_error"))
        texts[i] += u.text
        if u.logprobs:
            logprobs[i] += u.logprobs
        if u.finish_reason:
            finishes[i], tokens[i] = u.finish_reason, u.completion_tokens
            left -= 1
    return JSONResponse(responses.whole(texts, finishes, _usage(request, tokens), logprobs))


async def _stream(request: Request, sequences: list[Choice], updates: asyncio.Queue,
                  responses: Responses) -> AsyncIterator[str]:
    """Server-sent events: for chat, a first chunk with the role; then text as it grows; a last chunk
    per choice with its finish reason; usage if asked; `[DONE]`."""
    event = lambda data: f"data: {json.dumps(data)}\n\n"
    tokens = [0] * len(sequences)
    offsets = [0] * len(sequences)  # text so far: where a completion's next token starts
    try:
        if responses.chat:
            for i in range(len(sequences)):
                yield event(responses.chunk(i, "", first=True))
        left = len(sequences)
        while left:
            i, u = await updates.get()
            if u.error:
                yield event(ApiError(500, u.error, kind="internal_server_error").body())
                return
            if u.text or u.finish_reason or u.logprobs:
                logprobs = responses.logprobs(u.logprobs, offsets[i]) if request.top_logprobs is not None else None
                yield event(responses.chunk(i, u.text, u.finish_reason, logprobs=logprobs))
                offsets[i] += len(u.text)
            if u.finish_reason:
                tokens[i] = u.completion_tokens
                left -= 1
        if request.include_usage:
            yield event(responses.usage_chunk(_usage(request, tokens)))
        yield "data: [DONE]\n\n"
    finally:  # done, or the client went away mid-stream (Starlette cancels this generator): free the rows
        for s in sequences:
            s.cancelled = True
