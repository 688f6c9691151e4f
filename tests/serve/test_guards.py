"""The server against hostile clients (issue 27's probe), on 127.0.0.1: the app served by uvicorn on a
thread of this process, with real sockets and the official `openai` client. Without a key only local
hosts and origins are served and a body must be JSON; lax JSON is refused; tokenizing leaves the event
loop free; slow and idle connections are closed, connections are capped, and shutdown ends."""
import http.client
import json
import socket
import threading
import time

import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient
from support.commands import call_command, last_error
from support.serving import free_port, tiny_checkpoint

openai = pytest.importorskip("openai", reason="the server's tests use the official openai client (pip install openai)")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A loaded tiny checkpoint and its engine (compiling on demand: these tests send few requests)."""
    from lima_jax.inference.generator import Generator
    from lima_jax.serve.batching import Engine

    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("guards"))
    generator = Generator(str(ckpt))
    engine = Engine(generator, batch_sizes=[1], widths=[64], max_tokens=4, chunk_steps=4, max_logprobs=None)
    engine.start()
    yield generator, engine, ckpt
    engine.stop()


def _serve(parts, **config):
    """The app (no key) on a free port of 127.0.0.1, with `connections.server_config(**config)`."""
    from lima_jax.serve.app import make_app
    from lima_jax.serve.connections import serve_in_thread, server_config
    from lima_jax.serve.protocol import Limits, served_name

    generator, engine, ckpt = parts
    limits = Limits(model=served_name(str(ckpt)), context=64, max_tokens=4, max_n=1, max_logprobs=None,
                    aliases=(str(ckpt),))
    port = free_port()
    return serve_in_thread(server_config(make_app(generator, engine, limits), "127.0.0.1", port, **config)), port


@pytest.fixture(scope="module")
def keyless(parts):
    server, port = _serve(parts)
    yield port
    server.should_exit = True
    server.thread.join(timeout=60)


def _request(port: int, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, dict | bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        text = response.read()
        return response.status, json.loads(text) if response.getheader("content-type") == "application/json" else text
    finally:
        conn.close()


def _chat_body(model: str = "ckpt", content: str = "Hi") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2,
                       "temperature": 0}).encode()


def test_without_a_key_a_rebound_host_a_foreign_origin_or_a_non_json_body_is_refused(keyless):
    """A web page can make a visitor's browser POST to 127.0.0.1 (a "simple" request, any content type)
    or, by DNS rebinding, read the answers under its own host name: none of that reaches a route."""
    port = keyless
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["ckpt"]  # the folder's name, never its path
    assert client.chat.completions.create(model="ckpt", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    status, body = _request(port, "GET", "/v1/models", Host="attacker.example:8000")
    assert status == 403 and body["error"]["code"] == "host_not_allowed", body
    status, body = _request(port, "POST", "/v1/chat/completions", _chat_body(), Origin="http://attacker.example")
    assert status == 403 and body["error"]["code"] == "origin_not_allowed", body
    status, body = _request(port, "POST", "/v1/chat/completions", _chat_body(), **{"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in body["error"]["message"], body
    for host, origin in (("localhost:1", "http://localhost:3000"), ("[::1]:1", "http://127.0.0.1:5"), ("10.0.0.7", "")):
        status, body = _request(port, "POST", "/v1/chat/completions", _chat_body(), Host=host,
                                **({"Origin": origin} if origin else {}))
        assert status == 200, (host, origin, body)


def test_the_guard_with_a_key_or_allowed_names():
    from lima_jax.serve.guards import Guard

    plain = {b"host": b"lima.example", b"content-type": b"application/json"}
    assert Guard(None, key=None).problem("POST", "/v1/completions", plain).status == 403
    assert Guard(None, key=None, allowed_hosts=["LIMA.example"]).problem("POST", "/v1/completions", plain) is None
    page = {**plain, b"origin": b"https://app.example/"}
    allowed = Guard(None, key=None, allowed_hosts=["lima.example"], allowed_origins=["https://app.example"])
    assert allowed.problem("POST", "/v1/completions", page) is None
    assert allowed.problem("POST", "/v1/completions", {**page, b"origin": b"null"}).status == 403
    keyed = Guard(None, key="k")  # a key stands for the host and origin checks: a browser cannot send it unasked
    assert keyed.problem("POST", "/v1/completions", {**page, b"authorization": b"Bearer k"}) is None
    assert keyed.problem("POST", "/v1/completions", page).status == 401
    assert keyed.problem("GET", "/health", page) is None


def test_a_model_is_named_by_its_folder_and_its_path_is_accepted_as_an_alias(keyless, parts):
    from lima_jax.serve.protocol import served_name

    assert [served_name(p) for p in ("runs/tiny", "/abs/runs/tiny/", "gs://bucket/runs/x", "runs/tiny/checkpoints/90")] \
        == ["tiny", "tiny", "x", "tiny-step-90"]
    status, body = _request(keyless, "POST", "/v1/chat/completions", _chat_body(model=str(parts[2])))
    assert status == 200, body
    assert body["model"] == "ckpt"


@pytest.mark.parametrize("text", ['{"model": "ckpt", "temperature": NaN}', '{"model": "ckpt", "top_p": Infinity}',
                                  '{"model": "ckpt", "temperature": 1e400}', '{"model": "ckpt", "n": 1' + "0" * 5000 + "}",
                                  '{"model": "ckpt", "messages": [{"role": "user", "content": "\\ud800"}]}'])
def test_lax_json_is_a_400_not_a_failure_of_the_server(keyless, text):
    """Python's parser takes NaN, Infinity, 1e400 (as inf) and lone surrogates, which JSON does not allow:
    the surrogate reached the tokenizer and came back as a 500 with a traceback in the log."""
    status, body = _request(keyless, "POST", "/v1/chat/completions", text.encode())
    assert status == 400 and "request body" in body["error"]["message"], body


def test_a_failure_of_the_server_is_a_500_and_one_line_in_the_log(capfd):
    from starlette.middleware import Middleware

    from lima_jax.serve.app import OneLineErrors

    def broken(_):
        raise RuntimeError("a bug\nwith a second line")

    app = Starlette(routes=[Route("/x", broken)], middleware=[Middleware(OneLineErrors)])
    response = TestClient(app, raise_server_exceptions=False).get("/x")
    assert response.status_code == 500 and response.json()["error"]["type"] == "internal_server_error"
    err = capfd.readouterr().err
    assert "GET /x failed: RuntimeError: a bug" in err and "Traceback" not in err, err


def test_tokenizing_a_request_leaves_the_event_loop_serving_others(keyless, parts, monkeypatch):
    """A 50 MB body used to stall every client for about 19 s: it was parsed and tokenized on the loop.
    Here tokenizing waits until another client has been answered, which only a free loop can do."""
    generator = parts[0]
    encode, entered, answered = generator.encode, threading.Event(), threading.Event()

    def blocking_encode(turns):
        entered.set()
        answered.wait(30)
        return encode(turns)

    monkeypatch.setattr(generator, "encode", blocking_encode)
    results = {}
    asking = threading.Thread(target=lambda: results.update(chat=_request(keyless, "POST", "/v1/chat/completions",
                                                                          _chat_body())))
    asking.start()
    assert entered.wait(30)
    status, _ = _request(keyless, "GET", "/v1/models")  # times out if the loop is the one tokenizing
    answered.set()
    asking.join(timeout=120)
    assert status == 200 and results["chat"][0] == 200, results


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_idle_and_slow_connections_are_closed_and_the_others_served(parts):
    """150 idle sockets under a 128-descriptor limit used to refuse every other client: uvicorn never
    closed a connection whose request did not finish arriving."""
    server, port = _serve(parts, read_timeout_s=1.0)
    try:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        trickling = socket.create_connection(("127.0.0.1", port))
        trickling.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never end
        half_body = socket.create_connection(("127.0.0.1", port))
        half_body.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n{\"model\"")
        assert _request(port, "GET", "/v1/models")[0] == 200  # served meanwhile
        start = time.monotonic()
        for sock in [*idle, trickling, half_body]:
            assert _closed_by_server(sock, within_s=10), "a connection was left open past its read deadline"
            sock.close()
        assert time.monotonic() - start < 10
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # answered requests: kept alive
        for _ in range(2):
            kept.request("GET", "/health")
            assert kept.getresponse().read() == b""
            time.sleep(1.5)  # idle past the read deadline between requests: keep-alive governs that
        kept.close()
    finally:
        server.should_exit = True
        server.thread.join(timeout=60)


def test_past_max_connections_a_request_gets_a_503(parts):
    server, port = _serve(parts, max_connections=3)
    try:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        assert _request(port, "GET", "/health")[0] == 200  # the third connection
        held.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.2)  # the server has accepted it
        assert _request(port, "GET", "/health")[0] == 503
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while _request(port, "GET", "/health")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        server.should_exit = True
        server.thread.join(timeout=60)


def test_shutdown_ends_while_a_client_holds_a_body_half_sent(parts):
    """SIGTERM (uvicorn's `should_exit`) used to wait for a request body that never finished arriving."""
    server, port = _serve(parts, read_timeout_s=1.0)
    half_body = socket.create_connection(("127.0.0.1", port))
    half_body.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{")
    time.sleep(0.3)
    server.should_exit = True
    server.thread.join(timeout=20)
    half_body.close()
    assert not server.thread.is_alive()


def test_a_port_outside_tcp_and_a_public_address_without_a_key_are_told_at_start(tmp_path):
    r = call_command("serve", f"--checkpoint={tmp_path}", "--port=99999")
    assert r.returncode != 0 and last_error(r) == "error: --port=99999: a TCP port is between 1 and 65535", r.stderr
    r = call_command("serve", f"--checkpoint={tmp_path / 'none'}", "--host=0.0.0.0")
    assert r.returncode != 0 and "warning: --host=0.0.0.0 without --api_key_env" in r.stderr, r.stderr
