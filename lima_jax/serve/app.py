"""The HTTP side: a Starlette app with OpenAI's routes over the engine.

    GET  /v1/models            the one model served
    POST /v1/chat/completions  LIMA's chat format (BOS, each turn followed by EOT)
    POST /v1/completions       plain text after BOS, or token ids as given
    GET  /health               200 once the programs are compiled
    GET  /metrics              counters of the engine (batches, sequences, padding rows, decode steps, cancelled)

Every error is OpenAI's JSON (`{"error": {"message", "type", "param", "code"}}`) with a 4xx status for
what the client sent and 500 (logged in one line) for a failure of ours; the server keeps serving
either way. `guards.Guard` checks each request first (the API key, or without one Host and Origin).
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any, AsyncIterator, Iterable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lima_jax.log import say
from lima_jax.inference.generator import Generator
from lima_jax.serve.batching import Engine, Choice, Update
from lima_jax.serve.guards import Guard, error_response
from lima_jax.serve.protocol import ApiError, Limits, Request, Responses, parse

EOT_TEXT = "<eot>"  # LIMA's end-of-turn token has no piece of its own
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streaming request checks that its client is still there


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


def make_app(generator: Generator, engine: Engine, limits: Limits, *, api_key: str | None = None,
             allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()) -> Starlette:
    """The app; `api_key` and the allowed hosts and origins are `guards.Guard`'s."""
    endpoints = _Endpoints(generator, engine, limits)
    routes = [
        Route("/v1/models", endpoints.models, methods=["GET"]),
        Route("/v1/chat/completions", endpoints.chat_completions, methods=["POST"]),
        Route("/v1/completions", endpoints.text_completions, methods=["POST"]),
        Route("/health", endpoints.health, methods=["GET"]),
        Route("/metrics", endpoints.metrics, methods=["GET"]),
    ]
    guard = Middleware(Guard, key=api_key, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins)
    return Starlette(routes=routes, middleware=[Middleware(OneLineErrors), guard],
                     exception_handlers={HTTPException: _http_error})


async def _http_error(_: HttpRequest, e: HTTPException) -> Response:
    kind = "NotFoundError" if e.status_code == 404 else "invalid_request_error"
    return error_response(ApiError(e.status_code, str(e.detail), kind=kind))


class _Endpoints:
    """The routes' handlers over one generator, its engine and the server's limits."""

    def __init__(self, generator: Generator, engine: Engine, limits: Limits):
        self.generator, self.engine, self.limits = generator, engine, limits
        self.tokenizer = generator.tokenizer
        self.vocab = generator.model.cfg.used_vocab_size
        self.started = int(time.time())

    async def models(self, _: HttpRequest) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.limits.model, "object": "model", "created": self.started,
                                                          "owned_by": "lima_jax", "max_model_len": self.limits.context}]})

    async def health(self, _: HttpRequest) -> Response:
        return Response(status_code=200)

    async def metrics(self, _: HttpRequest) -> Response:
        """Prometheus' text format, as vLLM's /metrics: how requests were batched."""
        values = {**{f"{k}_total": v for k, v in self.engine.stats.items()}, "compiled_programs": self.engine.compiled,
                  "waiting_sequences": self.engine.waiting.qsize()}
        return PlainTextResponse("".join(f"lima_serve_{k} {v}\n" for k, v in values.items()))

    async def chat_completions(self, http: HttpRequest) -> Response:
        return await self.completions(http, chat=True)

    async def text_completions(self, http: HttpRequest) -> Response:
        return await self.completions(http, chat=False)

    async def completions(self, http: HttpRequest, chat: bool) -> Response:
        try:
            request = await asyncio.to_thread(self.read, await _body(http, self.limits.max_request_bytes), chat)
        except ApiError as e:
            return error_response(e)
        except ClientDisconnect:  # gone before its body arrived (or closed for arriving too slowly)
            return Response(status_code=499)
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[tuple[int, Update]] = asyncio.Queue()
        sequences = [
            Choice(prompt, request.params, request.seed + j, request.stop,
                   lambda u, i=i * request.n + j: loop.call_soon_threadsafe(updates.put_nowait, (i, u)),
                   request.top_logprobs)
            for i, prompt in enumerate(request.prompts) for j in range(request.n)
        ]
        self.engine.submit(sequences)
        responses = Responses(self.limits.model, chat, self.token_text)
        if request.stream:
            return StreamingResponse(_stream(request, sequences, updates, responses), media_type="text/event-stream")
        return await _whole(http, request, sequences, updates, responses)

    def read(self, data: bytes, chat: bool) -> Request:
        """The body as the sequences to generate, or an ApiError. Run on a worker thread: parsing and
        tokenizing a large body takes a while, and the event loop keeps serving other clients meanwhile."""
        request = parse(loads(data), self.limits, self.generator.encode, self.encode_text, chat=chat)
        for p in request.prompts:
            bad = [t for t in p if not 0 <= t < self.vocab]
            if bad:
                raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{self.vocab - 1})", param="prompt")
        return request

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode_plain(text)

    def token_text(self, token: int) -> str:
        """A token as log-probabilities name it: the text it adds, its leading space included."""
        if token == self.generator.eot_id:
            return EOT_TEXT
        if 0 <= token < self.tokenizer.num_pieces:
            return self.tokenizer.token_text(token)
        return ""


class OneLineErrors:
    """ASGI middleware: a failure of ours is a 500 with OpenAI's error JSON and one line in the log, not
    Starlette's traceback per request (a client repeating a request that fails would flood the log)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as e:  # noqa: BLE001 - whatever failed, the server answers and keeps serving
            say(f"serve: {scope.get('method', '')} {scope.get('path', '')} failed: {type(e).__name__}: {e}")
            if not started and scope["type"] == "http":
                await error_response(ApiError(500, f"{type(e).__name__}: {e}", kind="internal_server_error"))(
                    scope, receive, send)


def loads(data: bytes) -> Any:
    """A body as JSON, refused (400) where Python's parser is laxer than JSON: NaN and Infinity, numbers
    too large for a float or an int, strings holding a lone UTF-16 surrogate (not text: the tokenizer
    cannot take it)."""
    def refuse(constant: str) -> None:
        raise ApiError(400, f"the request body is not valid JSON: {constant} is not a JSON number")

    def finite(text: str) -> float:
        if not math.isfinite(value := float(text)):
            raise ApiError(400, f"the request body is not valid JSON: {text[:40]} is too large for a number")
        return value

    try:
        body = json.loads(data, parse_constant=refuse, parse_float=finite)
    except ValueError as e:  # not JSON, not UTF-8, or an integer past Python's 4,300 digits
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    try:  # a lone surrogate can only come from a \u escape: UTF-8 bytes cannot encode one
        if b"\\u" in data:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"the request body holds a lone surrogate ({e.object[e.start:e.end]!r}) in a string: "
                       "that is not text") from None
    return body


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
