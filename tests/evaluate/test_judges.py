"""The OpenAI-compatible judge client against a real HTTP server on 127.0.0.1 whose answers each
test scripts per request (support.judges)."""
from __future__ import annotations

import socket
import time

import pytest

from lima_jax.errors import LimaError
from lima_jax.evaluate.judge.openai import OpenAIJudge
from lima_jax.evaluate.judge.protocol import Judge, JudgeFailure, JudgeUnavailable
from lima_jax.evaluate.judge.prompts import PAIRWISE_CHOICES
from support.judges import Reply, Request, ScriptedServer, fast_judge


MESSAGES = [{"role": "user", "content": "Which is better? ..."}]


def test_request_is_openai_chat_completions_with_bearer_key(monkeypatch):
    monkeypatch.setenv("LIMA_TEST_KEY", "sk-test-123")
    with ScriptedServer(lambda r: Reply("Reasons.\nVerdict: B")) as server:
        judge = fast_judge(server.url, api_key_env="LIMA_TEST_KEY")
        assert judge.verdict(MESSAGES, PAIRWISE_CHOICES) == ("B", "Reasons.\nVerdict: B")
        monkeypatch.delenv("LIMA_TEST_KEY")
        assert judge.complete(MESSAGES) == "Reasons.\nVerdict: B"  # a local server needs no key
    first, second = server.requests
    assert first.path == "/v1/chat/completions"
    assert first.body == {"model": "judge-model", "messages": MESSAGES, "temperature": 0.0}
    assert first.headers["Authorization"] == "Bearer sk-test-123"
    assert "Authorization" not in second.headers
    assert isinstance(judge, Judge) and judge.name == "judge-model"


def test_timeout_is_retried():
    calls = []

    def script(r: Request) -> Reply:
        calls.append(time.monotonic())
        return Reply("Verdict: A", delay_s=1.0 if len(calls) == 1 else 0.0)

    with ScriptedServer(script) as server:
        t0 = time.monotonic()
        assert fast_judge(server.url, timeout_s=0.3).verdict(MESSAGES, PAIRWISE_CHOICES)[0] == "A"
        assert server.hits == 2
        assert time.monotonic() - t0 < 0.95  # the client gave up on the slow answer


def test_429_honours_retry_after_capped_and_5xx_backs_off_exponentially():
    replies = iter([Reply(status=429, body='{"error": "slow down"}', headers={"Retry-After": "7"}),
                    Reply(status=429, body="{}", headers={"Retry-After": "100"}),
                    Reply(status=500, body="oops"), Reply(status=503, body="busy"), Reply("Verdict: C")])
    slept: list[float] = []
    with ScriptedServer(lambda r: next(replies)) as server:
        judge = fast_judge(server.url, max_retries=4, backoff_s=1.0, max_backoff_s=30.0, sleep=slept.append)
        assert judge.verdict(MESSAGES, PAIRWISE_CHOICES) == ("C", "Verdict: C")
        assert server.hits == 5
    # Retry-After 7 honoured, 100 capped at 30; then backoff 1 * 2**attempt for the 5xx.
    assert slept == [7.0, 30.0, 4.0, 8.0]


def test_unreadable_answers_are_retried_then_fail_with_the_raw_output():
    with ScriptedServer(lambda r: Reply("Both have merits; I cannot choose.")) as server:
        with pytest.raises(JudgeFailure) as info:
            fast_judge(server.url, max_retries=2).verdict(MESSAGES, PAIRWISE_CHOICES)
        assert server.hits == 3
    assert info.value.raw == "Both have merits; I cannot choose."
    assert "no readable verdict" in str(info.value)


def test_malformed_bodies_and_5xx_fail_after_max_retries():
    bodies = iter(["<html>bad gateway</html>", '{"choices": []}'])
    with ScriptedServer(lambda r: Reply(body=next(bodies, "x"))) as server:
        with pytest.raises(JudgeFailure) as info:
            fast_judge(server.url, max_retries=1).complete(MESSAGES)
        assert server.hits == 2
    assert info.value.raw == '{"choices": []}'
    with ScriptedServer(lambda r: Reply(status=500, body="internal error")) as server:
        with pytest.raises(JudgeFailure, match="HTTP 500"):
            fast_judge(server.url, max_retries=3).complete(MESSAGES)
        assert server.hits == 4


def test_client_errors_are_not_retried():
    with ScriptedServer(lambda r: Reply(status=400, body='{"error": "context length exceeded"}')) as server:
        with pytest.raises(JudgeFailure, match="HTTP 400.*context length"):
            fast_judge(server.url).complete(MESSAGES)
        assert server.hits == 1
    with ScriptedServer(lambda r: Reply(status=401, body='{"error": "bad key"}')) as server:
        with pytest.raises(JudgeUnavailable, match="HTTP 401") as info:  # every prompt would fail: stop
            fast_judge(server.url).complete(MESSAGES)
        assert isinstance(info.value, LimaError) and server.hits == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_a_closed_port_is_a_one_line_error_at_once():
    """It used to be retried with backoff for minutes, prompt after prompt."""
    port = _closed_port()
    slept: list[float] = []
    with pytest.raises(JudgeUnavailable) as info:
        fast_judge(f"http://127.0.0.1:{port}/v1", max_retries=3, sleep=slept.append).complete(MESSAGES)
    assert str(info.value) == f"judge http://127.0.0.1:{port}/v1/chat/completions: connection refused (is the server running?)"
    assert slept == []


def test_a_dropped_connection_is_retried_with_capped_backoff():
    with ScriptedServer(lambda r: Reply(drop=True)) as server:
        slept: list[float] = []
        with pytest.raises(JudgeFailure, match="connection to .* failed"):
            fast_judge(server.url, max_retries=3, backoff_s=0.5, max_backoff_s=0.8, sleep=slept.append).complete(MESSAGES)
        assert slept == [0.5, 0.8, 0.8] and server.hits == 4  # doubling, capped at max_backoff_s


def test_bad_settings_are_one_line_errors():
    with pytest.raises(LimaError, match="not an http"):
        OpenAIJudge("api.openai.com/v1", "gpt-4")
    with pytest.raises(LimaError, match="model"):
        OpenAIJudge("http://127.0.0.1:1/v1", "")
