"""The OpenAI-compatible server, through the official `openai` client against `python -m lima_jax.serve`
on 127.0.0.1: its answers are `lima_jax.sample`'s, streamed or not, alone or sixteen at once; bad
requests get OpenAI's 4xx errors and the server keeps serving; nothing compiles after warm-up."""
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from support.commands import call_command
from support.serving import start_server, stop_server, tiny_checkpoint, wait_until_healthy

openai = pytest.importorskip("openai", reason="the server's tests use the official openai client (pip install openai)")

KEY = "test-key-1234"
MAX_TOKENS = 16
QUESTION = "What is 2 plus 2?"


def _http(url: str, body: bytes | None = None, key: str = KEY) -> tuple[int, dict | None]:
    """A raw request (what the openai client will not send): the status and the JSON body, if any."""
    request = urllib.request.Request(url, data=body, headers={"Authorization": f"Bearer {key}",
                                                               "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    return status, json.loads(text) if text else None


def _sample(ckpt, prompts, tmp, *flags) -> list[str]:
    """What `lima_jax.sample` answers to a prompt file (run in this process, while the server warms up in its own)."""
    path = tmp / f"prompts{len(list(tmp.iterdir()))}.jsonl"
    path.write_text("".join(json.dumps({"conversations": [p]}) + "\n" for p in prompts))
    r = call_command("sample", f"--checkpoint={ckpt}", f"--prompt_file={path}", f"--max_new_tokens={MAX_TOKENS}", *flags)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line)["output"] for line in r.stdout.strip().splitlines()]


PROMPTS = [QUESTION] + [f"Name {i} colors and {i} animals." for i in range(1, 16)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server on a free port (with a bearer key), and what `lima_jax.sample` answers meanwhile."""
    tmp = tmp_path_factory.mktemp("serve")
    ckpt = tiny_checkpoint(tmp)
    log = open(tmp / "server.log", "w+")
    server, url = start_server(ckpt, log, "--model_name=tiny", "--api_key_env=LIMA_SERVE_TEST_KEY",
                               f"--max_tokens={MAX_TOKENS}", "--chunk_steps=4", env={"LIMA_SERVE_TEST_KEY": KEY})
    prompts_dir = tmp / "prompts"
    prompts_dir.mkdir()
    expected = {"greedy": _sample(ckpt, PROMPTS, prompts_dir, "--temperature=0"),
                "seeded": _sample(ckpt, [QUESTION], prompts_dir, "--seed=5")[0]}
    wait_until_healthy(server, url, log)
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)
    yield {"client": client, "url": url, "expected": expected, "log": log, "ckpt": ckpt}
    stop_server(server)
    log.close()


def _chat(client, question=QUESTION, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                          max_tokens=MAX_TOKENS, **kw)


def test_the_server_lists_its_one_model(served):
    assert [m.id for m in served["client"].models.list()] == ["tiny"]


def test_a_greedy_chat_completion_equals_lima_jax_sample(served):
    r = _chat(served["client"], temperature=0)
    assert r.choices[0].message.content == served["expected"]["greedy"][0]
    assert r.choices[0].message.content  # a random model still says something
    assert r.choices[0].finish_reason == "length"  # (the test of a client leaving relies on it)
    assert r.usage.completion_tokens <= MAX_TOKENS and r.usage.prompt_tokens > 0


def test_a_seeded_chat_completion_with_lima_defaults_equals_lima_jax_sample(served):
    r = _chat(served["client"], seed=5)  # temperature, top_p, repetition_penalty absent: LIMA's
    assert r.choices[0].message.content == served["expected"]["seeded"]
    assert _chat(served["client"], seed=6).choices[0].message.content != served["expected"]["seeded"]


def test_streamed_chunks_concatenate_to_the_same_text(served):
    client = served["client"]
    chunks = list(_chat(client, temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == served["expected"]["greedy"][0]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # it came in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0
    whole = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=MAX_TOKENS, seed=1)
    streamed = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=MAX_TOKENS, seed=1,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text != ""


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url.replace("/v1", "/metrics"), timeout=30) as r:
        lines = r.read().decode().splitlines()
    return {name: float(value) for name, value in (line.split() for line in lines)}


def test_sixteen_concurrent_requests_all_answer_correctly(served):
    before = _metrics(served["url"])
    answers = [None] * len(PROMPTS)

    def ask(i):
        answers[i] = _chat(served["client"], PROMPTS[i], temperature=0).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == served["expected"]["greedy"]
    assert len(set(answers)) > 1
    after = _metrics(served["url"])
    assert after["lima_serve_sequences_total"] - before["lima_serve_sequences_total"] == 16
    assert after["lima_serve_batches_total"] - before["lima_serve_batches_total"] <= 8  # they shared batches


def test_n_choices_draw_from_consecutive_seeds_and_stop_strings_cut(served):
    client = served["client"]
    both = _chat(client, seed=5, n=2, temperature=1.0)
    assert [c.message.content for c in both.choices] == [_chat(client, seed=s, temperature=1.0).choices[0].message.content
                                                          for s in (5, 6)]
    greedy = served["expected"]["greedy"][0]
    stop = greedy[len(greedy) // 2: len(greedy) // 2 + 2]
    cut = _chat(client, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == greedy[: greedy.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_bad_requests_get_openai_errors_with_4xx_and_the_next_request_works(served):
    client, url = served["client"], served["url"]
    status, body = _http(f"{url}/chat/completions", b'{"model": "tiny", "messages": [')
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, "word " * 100)
    assert e.value.code == "context_length_exceeded" and "maximum context length is 64" in e.value.message
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        _chat(client, logprobs=True, top_logprobs=21)
    with pytest.raises(openai.BadRequestError, match="top_p"):
        _chat(client, top_p=0)
    with pytest.raises(openai.BadRequestError, match="alternate"):
        client.chat.completions.create(model="tiny", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    status, body = _http(f"{url}/nowhere")
    assert status == 404 and body["error"]["message"]
    assert _chat(client, temperature=0).choices[0].message.content == served["expected"]["greedy"][0]


def test_a_seed_past_64_bits_is_a_400_and_the_requests_batched_beside_it_answer(served):
    """A `seed` of 2**63 used to pass `parse` and fail in the engine thread with an OverflowError, failing every
    request batched with it: a denial of service for the other clients, no key needed."""
    client, greedy = served["client"], served["expected"]["greedy"][0]
    bad = [{"seed": 2**63}, {"seed": -(2**63) - 1}, {"seed": 2**63 - 1, "n": 2}]  # choice j draws with seed + j
    results = [None] * (len(bad) + 3)

    def ask(i):
        try:
            kw = bad[i] if i < len(bad) else {"temperature": 0}
            results[i] = _chat(client, **kw).choices[0].message.content
        except openai.BadRequestError as e:
            results[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for e in results[: len(bad)]:
        assert isinstance(e, openai.BadRequestError) and e.param == "seed" and "64-bit" in e.message, e
    assert results[len(bad):] == [greedy] * 3
    assert _chat(client, seed=2**63 - 2, n=2).choices[1].message.content  # the last seeds that fit


def test_a_completion_request_holds_at_most_one_batch_of_sequences(served):
    """`n` was capped at 16, the prompt list was not: 200 prompts x n 16 queued 3,200 sequences from one request."""
    client = served["client"]
    for prompts, n in ((["Once upon a time"] * 200, 16), (["Once"] * 17, 1), (["Once"] * 4, 5)):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", prompt=prompts, n=n, max_tokens=MAX_TOKENS)
        assert e.value.param == "prompt" and f"{len(prompts)} prompts x n={n}" in e.value.message, e.value.message
    answers = client.completions.create(model="tiny", prompt=["Once"] * 4, n=4, max_tokens=MAX_TOKENS, seed=1)
    assert len(answers.choices) == 16  # one whole batch is fine


def test_a_body_past_the_limit_is_a_413_before_it_is_read_whole(served):
    """One 50 MB body used to stall every client for about 19 s and add 2.3 GB of memory."""
    import http.client

    address = urllib.parse.urlsplit(served["url"])
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def post(declared_length: int | None, chunks=()):
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        conn.putrequest("POST", "/v1/chat/completions")
        for k, v in {**headers, **({"Content-Length": str(declared_length)} if declared_length else
                                   {"Transfer-Encoding": "chunked"})}.items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            for chunk in chunks:  # chunked: each is sent as it would arrive
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        except ConnectionError:  # the server answered and closed while the upload went on
            return 413, None
        finally:
            conn.close()

    # 50 MB declared, nothing sent: the answer comes from the header alone
    status, body = post(50 * 2**20)
    assert status == 413 and "larger than this server's limit of 4194304 bytes" in body["error"]["message"], body
    # No length declared: counted as it arrives; 64 chunks of 128 KiB pass the limit at the 33rd
    status, _ = post(None, [b" " * 2**17] * 64)
    assert status == 413
    assert _chat(served["client"], temperature=0).choices[0].message.content == served["expected"]["greedy"][0]


def test_a_row_the_sampler_refuses_fails_alone_and_its_batch_answers(local):
    """Whatever reaches the engine unchecked fails its own sequence, not the batch it was gathered into."""
    from lima_jax.inference.sampler import SamplingParams
    from lima_jax.serve.batching import Choice, Engine

    engine = Engine(local, batch_sizes=[4], widths=[16], max_tokens=4, batch_wait_s=0.5)
    updates = {name: [] for name in ("bad", "good")}
    params = SamplingParams(temperature=0.7, max_new_tokens=4)
    prompt = local.encode(["Hi"])
    engine.start()
    try:
        engine.submit([Choice(prompt, params, 2**63, [], updates["bad"].append),
                       Choice(prompt, params, 5, [], updates["good"].append)])
        deadline = time.time() + 120
        while not all(u and (u[-1].finish_reason or u[-1].error) for u in updates.values()):
            assert time.time() < deadline, updates
            time.sleep(0.05)
    finally:
        engine.stop()
    assert "seed" in updates["bad"][-1].error and not any(u.error for u in updates["good"])
    assert updates["good"][-1].finish_reason in ("stop", "length")


def test_a_client_leaving_mid_stream_does_not_stop_the_server(served):
    client = served["client"]
    stream = _chat(client, temperature=0, stream=True)
    next(iter(stream))
    stream.close()
    assert _chat(client, temperature=0).choices[0].message.content == served["expected"]["greedy"][0]


@pytest.fixture(scope="module")
def local(served):
    """The served checkpoint loaded in this process."""
    from lima_jax.inference.generator import Generator

    return Generator(str(served["ckpt"]))


def test_logprobs_are_the_models_own_log_softmax(served, local):
    import jax
    import numpy as np

    from lima_jax.inference.sampler import SamplingParams

    client = served["client"]
    r = _chat(client, temperature=0, logprobs=True, top_logprobs=3)
    prompt = local.encode([QUESTION])
    ids = local([prompt], SamplingParams(temperature=0, max_new_tokens=MAX_TOKENS), 0)[0]
    ids = [t for t in ids if t not in local.stop_ids]
    # The reference: one forward over prompt + answer (not the decode path), log-softmax at each step.
    logits = local.model(np.asarray([prompt + ids]))[0, len(prompt) - 1: -1]
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, axis=-1)), np.asarray(ids)[:, None], -1)[:, 0]
    content = r.choices[0].logprobs.content
    assert [c.token for c in content] == [local.tokenizer.text.sp.id_to_piece(t).replace("\u2581", " ") for t in ids]
    np.testing.assert_allclose([c.logprob for c in content], want, atol=1e-4)
    assert all(len(c.top_logprobs) == 3 and c.top_logprobs[0].logprob == c.logprob for c in content)  # greedy: the top
    streamed = [c for chunk in _chat(client, temperature=0, logprobs=True, top_logprobs=3, stream=True)
                if chunk.choices and chunk.choices[0].logprobs for c in chunk.choices[0].logprobs.content]
    assert [(c.token, c.logprob) for c in streamed] == [(c.token, c.logprob) for c in content]
    text = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=MAX_TOKENS, logprobs=2, seed=1)
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == text.usage.completion_tokens
    assert all(len(top) <= 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0


def test_a_client_that_leaves_frees_its_row_and_the_others_answer_as_before(served, local):
    """The engine in this process: a sequence whose client leaves after its first text stops decoding;
    alone, its batch ends within a chunk; beside another, that one's answer does not change."""
    from lima_jax.inference.sampler import SamplingParams
    from lima_jax.serve.batching import Engine, Choice

    generator = local
    engine = Engine(generator, batch_sizes=[2], widths=[64], max_tokens=MAX_TOKENS, chunk_steps=2)
    prompt = generator.encode([QUESTION])
    greedy = SamplingParams(temperature=0, max_new_tokens=MAX_TOKENS)
    texts = {"stays": ""}

    def leave(u):
        leaving.cancelled = True

    def stay(u):
        texts["stays"] += u.text

    leaving = Choice(prompt, greedy, 0, [], leave)
    engine._run([leaving])
    assert engine.stats["cancelled"] == 1 and engine.stats["decode_steps"] < MAX_TOKENS
    leaving = Choice(prompt, greedy, 0, [], leave)
    engine._run([leaving, Choice(prompt, greedy, 0, [], stay)])
    assert engine.stats["cancelled"] == 2
    assert texts["stays"] == served["expected"]["greedy"][0]


def test_nothing_compiles_after_warm_up(served):
    log = served["log"]
    log.flush()
    log.seek(0)
    text = log.read()
    # 3 batch sizes x 1 prompt width x (prefill, decode: greedy or sampling, log-probabilities or not)
    assert "serve: compiled 6 programs" in text
    assert "after warm-up" not in text
