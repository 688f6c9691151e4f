"""`OpenAIJudge`: the `Judge` protocol over any OpenAI-compatible chat-completions service (a hosted
GPT-4-class model, or a local vLLM server), using urllib, so judging needs no extra dependency.
Timeouts, connection errors, 429, 5xx and unreadable answers are retried with capped exponential
backoff; a bad key, URL or model stops the run (`JudgeUnavailable`).
"""
from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Callable, Sequence

from lima_jax.errors import LimaError
from lima_jax.evaluate.judge.prompts import parse_verdict
from lima_jax.evaluate.judge.protocol import JudgeFailure, JudgeUnavailable, Messages

Parser = Callable[[str, Sequence[str]], "str | None"]


class _Retryable(Exception):
    def __init__(self, message: str, raw: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.raw = raw
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _short(text: str | None, limit: int = 300) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit] + "..."


class OpenAIJudge:
    """A chat model behind `{base_url}/chat/completions`, asked at temperature 0 by default."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 2.0,
        temperature: float = 0.0,
        max_backoff_s: float = 60.0,
        max_tokens: int | None = None,
        parser: Parser = parse_verdict,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not base_url or urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise LimaError(f"judge URL {base_url!r} is not an http(s) URL (e.g. https://api.openai.com/v1)")
        if not model:
            raise LimaError("the judge model is required (e.g. gpt-4)")
        if max_retries < 0 or timeout_s <= 0 or backoff_s < 0 or max_backoff_s < 0:
            raise LimaError("judge retries, timeout and backoff must not be negative (timeout above 0)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.name = model
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.parser = parser
        self._sleep = sleep
        # A local server is reached directly even when an http(s)_proxy is set for the internet.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)

    def verdict(self, prompt_messages: Messages, choices: Sequence[str]) -> tuple[str, str]:
        raw = self.complete(prompt_messages, parse=lambda text: self.parser(text, choices))
        choice = self.parser(raw, choices)
        assert choice is not None  # complete() returns only parseable text when given a parser
        return choice, raw

    def complete(self, messages: Messages, parse: Callable[[str], object] | None = None) -> str:
        """The model's reply. Timeouts, connection errors, 429, 5xx, malformed bodies and (with
        `parse`) replies that `parse` maps to None are retried with exponential backoff; after
        `max_retries` retries, JudgeFailure carries the last error and raw output."""
        last: _Retryable | None = None
        for attempt in range(self.max_retries + 1):
            if last is not None:
                delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
                if last.retry_after is not None:  # the server knows best, within our cap
                    delay = min(last.retry_after, self.max_backoff_s)
                self._sleep(delay)
            try:
                text = self._post(messages)
            except _Retryable as e:
                last = e
                continue
            if parse is not None and parse(text) is None:
                last = _Retryable(f"no readable verdict in the answer: {_short(text, 120)!r}", raw=text)
                continue
            return text
        assert last is not None
        raise JudgeFailure(f"{self.max_retries + 1} attempts, last: {last}", raw=last.raw)

    def _post(self, messages: Messages) -> str:
        body: dict[str, object] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:  # a local server usually needs none
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                payload = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", errors="replace") if e.fp else ""
            if e.code == 429 or e.code >= 500:
                raise _Retryable(f"HTTP {e.code}: {_short(detail)}", raw=detail,
                                 retry_after=_retry_after(e.headers.get("Retry-After") if e.headers else None)) from None
            if e.code in (401, 403, 404):
                hint = (f" (is ${self.api_key_env} set?)" if e.code in (401, 403)
                        else f" (check the URL and the model, {self.model!r})")
                raise JudgeUnavailable(f"judge {self.url} answered HTTP {e.code}: {_short(detail, 200)}{hint}") from None
            # Other 4xx (e.g. a prompt over the context length) concern this prompt only; asking
            # again would get the same answer.
            raise JudgeFailure(f"HTTP {e.code}: {_short(detail)}", raw=detail) from None
        except (TimeoutError, socket.timeout) as e:
            raise _Retryable(f"no answer within {self.timeout_s:g}s ({e})") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"no answer within {self.timeout_s:g}s") from None
            if isinstance(reason, ConnectionRefusedError):  # nothing listens there: every prompt would wait for nothing
                raise JudgeUnavailable(f"judge {self.url}: connection refused (is the server running?)") from None
            raise _Retryable(f"cannot reach {self.url}: {reason}") from None
        except (OSError, http.client.HTTPException) as e:  # reset or dropped connections
            raise _Retryable(f"connection to {self.url} failed: {type(e).__name__}: {e}") from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"not a chat-completions answer: {_short(payload, 120)!r}", raw=payload) from None
        if not isinstance(content, str):
            raise _Retryable("the answer has no text content", raw=payload)
        return content
