"""What every request must pass before a route sees it, as one ASGI middleware.

- With an API key, each /v1 route wants `Authorization: Bearer KEY`.
- Without one, the server trusts whoever can reach it, so it refuses what a web page could send it
  through a visitor's browser (the class of Ollama's CVE-2024-28224): a Host that is a name other than
  `localhost` (DNS rebinding points the attacker's name at 127.0.0.1, and the browser then sends that
  name; an IP literal cannot be rebound) unless `--allowed_hosts` lists it, and an `Origin` other than a
  loopback one unless `--allowed_origins` lists it.
- A POST's body must be declared `application/json`: a browser sends a cross-origin POST unasked only
  as a "simple" request (text/plain, a form), so JSON-only bodies leave such pages nothing to send.
"""
from __future__ import annotations

import hmac
import ipaddress
import urllib.parse
from typing import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from lima_jax.serve.protocol import ApiError

LOOPBACK_NAMES = ("localhost",)


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1 (an address to bind, or a URL's host)."""
    ip = _ip(host)
    return host.lower() in LOOPBACK_NAMES if ip is None else ip.is_loopback


def _host_name(host_header: str) -> str:
    """`127.0.0.1:8000` -> `127.0.0.1`, `[::1]:8000` -> `::1`, `Example.COM` -> `example.com`."""
    return (urllib.parse.urlsplit("//" + host_header).hostname or "").lower()


class Guard:
    """ASGI middleware: refuses a request that fails the module's checks with OpenAI's error JSON."""

    def __init__(self, app: ASGIApp, *, key: str | None, allowed_hosts: Iterable[str] = (),
                 allowed_origins: Iterable[str] = ()):
        self.app, self.key = app, key.encode() if key else None
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self.problem(scope["method"], scope["path"], dict(scope["headers"]))
            if problem is not None:
                await error_response(problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def problem(self, method: str, path: str, headers: dict[bytes, bytes]) -> ApiError | None:
        text = lambda name: headers.get(name, b"").decode("latin-1")
        if self.key is None:
            host = _host_name(text(b"host"))
            if not (is_loopback(host) or _ip(host) or host in self.allowed_hosts):
                return ApiError(403, f"Host '{text(b'host')}' is not served: without an API key this server answers "
                                "requests addressed to localhost or an IP address (--allowed_hosts adds names)",
                                code="host_not_allowed")
            origin = text(b"origin")
            if origin and not (is_loopback(urllib.parse.urlsplit(origin).hostname or "")
                               or origin.rstrip("/").lower() in self.allowed_origins):
                return ApiError(403, f"Origin '{origin}' is not served: without an API key this server answers pages "
                                "of loopback origins only (--allowed_origins adds others)", code="origin_not_allowed")
        elif path.startswith("/v1") and not hmac.compare_digest(text(b"authorization").encode("latin-1"),
                                                                b"Bearer " + self.key):
            return ApiError(401, "Incorrect API key provided", code="invalid_api_key")
        content_type = text(b"content-type").partition(";")[0].strip().lower()
        if method == "POST" and content_type != "application/json":
            return ApiError(415, f"the request body must be sent as 'Content-Type: application/json', not "
                            f"'{content_type or 'none'}'", code="unsupported_media_type")
        return None
