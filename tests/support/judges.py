"""A real HTTP server on 127.0.0.1 that answers like an OpenAI-compatible judge, each request's reply
scripted by the test; and the judge client the tests point at it."""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from lima_jax.evaluate.judge.openai import OpenAIJudge


@dataclasses.dataclass
class Reply:
    content: str | None = None  # a chat-completions answer with this text
    status: int = 200
    body: str | None = None  # a raw body instead (garbage, an error message)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (past the client's timeout, to time it out)
    drop: bool = False  # close the connection without an answer


def chat_body(content: str) -> str:
    return json.dumps({"id": "cmpl-1", "object": "chat.completion", "model": "judge",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}]})


@dataclasses.dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def user_text(self) -> str:
        return self.body["messages"][-1]["content"]


class ScriptedServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 (ephemeral port); `script` maps
    each request to a Reply. Every request is recorded in `requests`."""

    def __init__(self, script: Callable[[Request], Reply]):
        self.script = script
        self.requests: list[Request] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def hits(self) -> int:
        with self.lock:
            return len(self.requests)

    def __enter__(self) -> "ScriptedServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                request = Request(self.path, dict(self.headers), json.loads(self.rfile.read(length)))
                with server.lock:
                    server.requests.append(request)
                reply = Reply(status=404, body="no such route") if self.path != "/v1/chat/completions" \
                    else server.script(request)
                time.sleep(reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    return
                payload = (reply.body if reply.body is not None else chat_body(reply.content or "")).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def fast_judge(url: str, **kw: Any) -> OpenAIJudge:
    opts = dict(timeout_s=2.0, max_retries=2, backoff_s=0.01, max_backoff_s=0.05)
    opts.update(kw)
    return OpenAIJudge(url, "judge-model", **opts)
