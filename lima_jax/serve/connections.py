"""How the server holds its connections: uvicorn's HTTP/1.1 protocol with a deadline for reading each
request, a cap on connections, and shutdown that ends.

uvicorn closes a connection that idles between requests (`timeout_keep_alive`) but waits forever for a
request that never finishes arriving: idle sockets held open once exhausted its file descriptors and
refused every other client, and a body left half-sent kept SIGTERM waiting. Here the headers and body
of each request must arrive within `read_timeout_s` of its first byte (of the connection, for the
first request), as nginx's client header and body timeouts bound them; answering may take as long as
generating does.
"""
from __future__ import annotations

import asyncio
import resource
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from lima_jax.log import say

# uvicorn closes an idle kept-alive connection after 5 s by default; a client reusing it at that moment
# gets "Server disconnected without sending a response". Clients between batches idle longer than that.
KEEP_ALIVE_S = 75
READ_TIMEOUT_S = 30.0  # a request's headers and body, from its first byte: ample on any link for 4 MiB
SHUTDOWN_S = 30  # SIGTERM: answers in progress get this long to finish, then they are cancelled
FD_RESERVE = 64  # file descriptors kept for what is not a client connection (checkpoint files, logs, pipes)


class ReadDeadlineProtocol(H11Protocol):
    """H11Protocol that closes a connection whose request does not arrive whole within `read_timeout_s`."""

    read_timeout_s = READ_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle wait that follows
        self._watch(waiting=bool(self.conn.trailing_data[0]))  # unless the next request has begun arriving

    def _watch(self, waiting: bool = True) -> None:
        """Armed while a request is being read (the client's side is IDLE with its headers to come, or
        SEND_BODY), disarmed once it is whole or the connection closes."""
        reading = waiting and self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing()
        if reading and self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout_s, self._too_slow)
        elif not reading:
            self._disarm()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.transport.close()  # a route waiting for the rest of the body sees its client gone


def connection_cap(wanted: int) -> int:
    """`wanted` connections at most, within the process's file-descriptor limit: the soft limit is raised
    toward the hard one if needed, and the cap lowered (with a warning) if that is not enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        cap = max(1, soft - FD_RESERVE)
        say(f"warning: the open-file limit ({soft}) leaves room for {cap} connections, not {wanted} "
            "(--max_connections; raise it with `ulimit -n`)")
        return cap
    return wanted


def server_config(app, host: str, port: int, *, max_connections: int = 256,
                  read_timeout_s: float = READ_TIMEOUT_S) -> uvicorn.Config:
    """uvicorn's configuration for `app`: the protocol above, a connection cap (past it a request gets a
    503), keep-alive and shutdown bounds."""
    protocol = type("ReadDeadlineProtocol", (ReadDeadlineProtocol,), {"read_timeout_s": read_timeout_s})
    return uvicorn.Config(app, host=host, port=port, log_level="warning", http=protocol,
                          timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=SHUTDOWN_S,
                          limit_concurrency=connection_cap(max_connections) + 1)  # uvicorn refuses at >= limit


def serve_in_thread(config: uvicorn.Config) -> uvicorn.Server:
    """The server on a thread of this process (a benchmark's clients beside it); returns once it listens.
    `server.should_exit = True` stops it, as SIGTERM does."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="lima_jax.serve http", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server did not start on {config.host}:{config.port}")
        time.sleep(0.05)
    server.thread = thread  # type: ignore[attr-defined]
    return server
