"""The OpenAI API's requests and responses: a JSON body checked and turned into the sequences to
generate, and the JSON (or server-sent-event chunks) that answer it.

Absent sampling fields take LIMA's values (temperature 0.7, top_p 0.9, repetition_penalty 1.2), as
vLLM takes a model's generation config: the server answers as `lima_jax.sample` does by default.
`repetition_penalty` is an extension (vLLM's name). Choice j of a request with `seed` s samples as
`lima_jax.sample --seed=s+j` does; without a seed each request draws one at random. Fields the
sampler cannot honour (presence/frequency penalties, logit_bias, echo, best_of) are a 400 naming the
field rather than silently ignored. Log-probabilities are the model's own (its log-softmax before
the penalty, temperature and nucleus, as vLLM returns by default), for every generated token but the
stop token.
"""
from __future__ import annotations

import dataclasses
import os
import random
import time
import uuid
from typing import Any, Callable

from lima_jax.errors import LimaError
from lima_jax.inference.sampler import SEEDS, SamplingParams
from lima_jax.weights.checkpoint import STEPS_DIR

LIMA = SamplingParams()  # LIMA's sampling: the defaults of every absent field


class ApiError(LimaError):
    """A request the server refuses: an HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclasses.dataclass
class Request:
    """What a request asks for: prompts (token ids) and, for each, `n` choices sampled alike."""

    prompts: list[list[int]]
    n: int
    params: SamplingParams  # max_new_tokens: the request's max_tokens, or what the context leaves
    seed: int
    stop: list[str]
    stream: bool
    include_usage: bool
    max_tokens_given: bool
    top_logprobs: int | None = None  # None: no log-probabilities


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the served model and the compiled programs allow."""

    model: str  # the name clients send, and /v1/models lists
    context: int  # prompt + completion tokens, at most (the model's max_len)
    max_tokens: int  # new tokens per sequence, at most (the compiled programs' budget)
    max_n: int  # choices per request, at most (the largest compiled batch)
    max_logprobs: int | None = 20  # top_logprobs at most; None: no log-probabilities
    max_request_bytes: int = 4 * 2**20  # a request body at most (a 413 past it): many contexts' worth of text
    aliases: tuple[str, ...] = ()  # other names a request may use (the checkpoint as given), never listed


def served_name(checkpoint: str) -> str:
    """The model's name by default: its folder's name, not its path (which would tell every client how
    the server's disk is laid out); a run's saved step is `RUN-step-N`."""
    parts = [p for p in checkpoint.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or parts[-1] == ".." or (len(parts) == 1 and parts[0].endswith(":")):
        return os.path.basename(os.path.abspath(checkpoint)) or "model"
    if len(parts) >= 3 and parts[-1].isdigit() and parts[-2] == STEPS_DIR:
        return f"{parts[-3]}-step-{parts[-1]}"
    return parts[-1]


def _get(body: dict, name: str, types: tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    # bool is an int in Python; JSON's true is not a number
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join({int: "an integer", float: "a number", str: "a string", bool: "a boolean",
                             list: "an array", dict: "an object"}[t] for t in types)
        raise ApiError(400, f"'{name}' must be {names}, got {value!r}", param=name)
    return value


def _unsupported(body: dict, name: str, default: Any, what: str) -> None:
    if body.get(name) not in (None, default):
        raise ApiError(400, f"'{name}' is not supported by this server: {what}", param=name)


def parse(body: Any, limits: Limits, encode_chat: Callable[[list[str]], list[int]],
          encode_text: Callable[[str], list[int]], *, chat: bool) -> Request:
    """A chat or completions request body as the sequences to generate, or an ApiError (4xx)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _check_model(body, limits)
    prompts, top = _prompts(body, limits, encode_chat, encode_text, chat)
    n = _choices(body, limits, len(prompts), chat)
    max_tokens, room = _max_tokens(body, limits, max(len(p) for p in prompts), chat)
    params = _sampling(body, max_tokens or room)
    stop = _get(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "'stop' must be a string or an array of non-empty strings", param="stop")
    seed = _get(body, "seed", (int,))
    if seed is not None and not SEEDS[0] <= seed <= SEEDS[1] - (n - 1):  # choice j samples with seed + j
        raise ApiError(400, f"'seed' must be a 64-bit integer, and with n={n} at most {SEEDS[1] - (n - 1)} (choice j "
                       f"samples with seed + j): between {SEEDS[0]} and {SEEDS[1] - (n - 1)}, got {seed}", param="seed")
    options = _get(body, "stream_options", (dict,), {})
    return Request(prompts, n, params, random.randrange(2**31) if seed is None else seed, stop,
                   bool(_get(body, "stream", (bool,), False)), bool(options.get("include_usage")), max_tokens is not None,
                   top)


def _check_model(body: dict, limits: Limits) -> None:
    model = _get(body, "model", (str,))
    if model is None:
        raise ApiError(400, "'model' is required", param="model")
    if model != limits.model and model not in limits.aliases:
        raise ApiError(404, f"The model `{model}` does not exist (this server serves `{limits.model}`)",
                       param="model", code="model_not_found", kind="NotFoundError")


def _prompts(body: dict, limits: Limits, encode_chat: Callable[[list[str]], list[int]],
             encode_text: Callable[[str], list[int]], chat: bool) -> tuple[list[list[int]], int | None]:
    """The prompts' token ids, and how many top log-probabilities each token reports (None: none)."""
    if chat:
        top = _get(body, "top_logprobs", (int,))
        if top is not None and not _get(body, "logprobs", (bool,), False):
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        top = (top or 0) if _get(body, "logprobs", (bool,), False) else None
        prompts = [encode_chat(_chat_turns(body.get("messages")))]
    else:
        top = _get(body, "logprobs", (int,))
        _unsupported(body, "echo", False, "the prompt is not echoed")
        _unsupported(body, "suffix", None, "no insertion")
        prompts = [p if isinstance(p, list) else encode_text(p) for p in _completion_prompts(body.get("prompt"))]
    name = "top_logprobs" if chat else "logprobs"
    if top is not None and limits.max_logprobs is None:
        raise ApiError(400, f"'{name}': this server was started without log-probabilities (--max_logprobs)", param=name)
    if top is not None and not 0 <= top <= limits.max_logprobs:
        raise ApiError(400, f"'{name}' must be between 0 and {limits.max_logprobs}, got {top}", param=name)
    return prompts, top


def _choices(body: dict, limits: Limits, num_prompts: int, chat: bool) -> int:
    """`n`, the choices per prompt, once the fields this server does not support are refused."""
    for name in ("presence_penalty", "frequency_penalty"):
        _unsupported(body, name, 0, "LIMA's penalty is 'repetition_penalty' (an extension, default 1.2)")
    _unsupported(body, "logit_bias", {}, "no logit bias")
    n = _get(body, "n", (int,), 1)
    if not 1 <= n <= limits.max_n:
        raise ApiError(400, f"'n' must be between 1 and {limits.max_n}, got {n}", param="n")
    if num_prompts * n > limits.max_n:  # one request never queues more than one batch holds
        raise ApiError(400, f"a request holds at most {limits.max_n} sequences (one batch), and {num_prompts} prompts x n={n} "
                       f"make {num_prompts * n}; send the prompts in several requests", param="prompt")
    if not chat and _get(body, "best_of", (int,), n) != n:
        raise ApiError(400, "'best_of' is not supported by this server: choices are not ranked", param="best_of")
    return n


def _max_tokens(body: dict, limits: Limits, longest: int, chat: bool) -> tuple[int | None, int]:
    """The tokens asked for (None: not said), and the room the longest prompt leaves."""
    max_tokens = _get(body, "max_completion_tokens", (int,)) if chat else None
    max_tokens = _get(body, "max_tokens", (int,), max_tokens)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"'max_tokens' must be at least 1, got {max_tokens}", param="max_tokens")
    room = min(limits.context - longest, limits.max_tokens)
    if max_tokens is not None and (longest + max_tokens > limits.context or max_tokens > limits.max_tokens) or room < 1:
        asked = max_tokens or 1
        raise ApiError(400, f"This model's maximum context length is {limits.context} tokens and it generates at most "
                       f"{limits.max_tokens}. However, you requested {longest + asked} tokens ({longest} in the "
                       f"{'messages' if chat else 'prompt'}, {asked} in the completion). Please reduce the length of "
                       f"the {'messages' if chat else 'prompt'} or completion.", param="messages" if chat else "prompt",
                       code="context_length_exceeded")
    return max_tokens, room


def _sampling(body: dict, max_new_tokens: int) -> SamplingParams:
    """The request's sampling fields, LIMA's where absent, checked."""
    params = SamplingParams(
        temperature=float(_get(body, "temperature", (int, float), LIMA.temperature)),
        top_p=float(_get(body, "top_p", (int, float), LIMA.top_p)),
        repetition_penalty=float(_get(body, "repetition_penalty", (int, float), LIMA.repetition_penalty)),
        max_new_tokens=max_new_tokens,
    )
    try:
        params.check({"max_new_tokens": "max_tokens"})  # named as the request names them
    except LimaError as e:
        raise ApiError(400, str(e)) from None
    return params


def _chat_turns(messages: Any) -> list[str]:
    """OpenAI messages as LIMA's alternating turns (user first, user last). LIMA has no system role:
    a system message is put before the first user message, separated by a blank line."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages")
    system, turns = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] must be an object with role system, user or assistant", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"messages[{i}]: only text content parts are supported", param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
        if m["role"] in ("system", "developer"):
            if turns:
                raise ApiError(400, f"messages[{i}]: a system message must come first", param="messages")
            system.append(content)
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ApiError(400, f"messages[{i}] is from {m['role']}, expected {expected}: LIMA's turns alternate, "
                           "starting with the user", param="messages")
        turns.append(content)
    if len(turns) % 2 == 0:
        raise ApiError(400, "the last message must be the user's", param="messages")
    if system:
        turns[0] = "\n\n".join(system + [turns[0]])
    return turns


def _completion_prompts(prompt: Any) -> list[str | list[int]]:
    """A string, an array of token ids, or an array of either: one prompt each."""
    ids = lambda p: isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
    if isinstance(prompt, str) or ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or ids(p) for p in prompt):
        return prompt
    raise ApiError(400, "'prompt' must be a string, an array of token ids, or a non-empty array of either", param="prompt")


TokenLogprobs = list  # [(token id, log-probability, [(id, log-probability)] of the most likely)]


class Responses:
    """The response bodies and stream chunks of one request (one id, one creation time)."""

    def __init__(self, model: str, chat: bool, token_text: Callable[[int], str] = str):
        self.model, self.chat, self.token_text = model, chat, token_text
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _head(self, chunk: bool) -> dict[str, Any]:
        kind = self.object + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def logprobs(self, tokens: TokenLogprobs | None, offset: int = 0) -> dict[str, Any] | None:
        """OpenAI's logprobs object: chat's `content` list, or the completions' parallel lists."""
        if tokens is None:
            return None
        text = self.token_text
        if self.chat:
            entry = lambda t, lp: {"token": text(t), "logprob": lp, "bytes": list(text(t).encode())}
            return {"content": [{**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in top]} for t, lp, top in tokens]}
        offsets = []
        for t, _, _ in tokens:
            offsets.append(offset)
            offset += len(text(t))
        return {"tokens": [text(t) for t, _, _ in tokens], "token_logprobs": [lp for _, lp, _ in tokens],
                "top_logprobs": [{text(i): v for i, v in top} for _, _, top in tokens], "text_offset": offsets}

    def _choice(self, index: int, text: str | None, finish: str | None, *, delta: bool, first: bool = False,
                logprobs: dict | None = None) -> dict:
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        if delta:
            message = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
            return {"index": index, "delta": message, "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": finish}

    @staticmethod
    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def whole(self, texts: list[str], finishes: list[str], usage: dict[str, int],
              logprobs: list[TokenLogprobs | None]) -> dict[str, Any]:
        choices = [self._choice(i, t, f, delta=False, logprobs=self.logprobs(lp))
                   for i, (t, f, lp) in enumerate(zip(texts, finishes, logprobs))]
        return {**self._head(False), "choices": choices, "usage": usage}

    def chunk(self, index: int, text: str | None, finish: str | None = None, *, first: bool = False,
              logprobs: dict | None = None) -> dict[str, Any]:
        return {**self._head(True), "choices": [self._choice(index, text, finish, delta=True, first=first,
                                                              logprobs=logprobs)]}

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._head(True), "choices": [], "usage": usage}
