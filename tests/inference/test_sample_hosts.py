"""Generating on the slice that trained: `sample` and `evaluate.generate` as two processes of four CPU
devices, the weights and KV cache over one mesh across both, give byte for byte what one process of
eight devices gives, and only process 0 writes. Four prompts split over fsdp 4 (rows across the
processes); the three a resumed `evaluate.generate` has left do not divide it (rows replicated).
(`evaluate.select` generates through the same `generate_responses` and is not launched here: a
training run plus its launches would cost about a minute more.)"""
import json
import os
import socket
import subprocess
import sys
import tempfile

import pytest

from lima_jax.evaluate.answers.records import make_record, prompt_id

from lima_jax.evaluate.answers.formats import read_responses
from support.commands import call_command

MESH = "--mesh=fsdp=4,tensor=2"  # fsdp crosses the two processes: each holds half of every weight
PROMPTS = [["What is 2 plus 2?"], ["Name a color."], ["Hi", "Hello!", "How are you?"], ["Spell cat backwards."]]
COMMON = ["--max_new_tokens=6", MESH]
SAMPLED = ["--temperature=1.0", "--seed=5"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random fine-tuned-format model (demo tokenizer + EOT, 513 ids) and a prompt file."""
    from support.models import converted_checkpoint

    root = tmp_path_factory.mktemp("hosts")
    ckpt = converted_checkpoint(root, 513)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"conversations": p}) + "\n" for p in PROMPTS))
    return ckpt, prompts


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(module, args, num_processes, check=True):
    """`python -m module` as `num_processes` processes sharing 8 CPU devices; each one's (return
    code, stdout, stderr). Output goes to files: a pipe nobody reads could stall a process."""
    devices = 8 // num_processes
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    port = _free_port()
    procs = []
    for i in range(num_processes):
        hosts = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}", f"--process_id={i}"]
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        cmd = [sys.executable, "-m", module, *args, *(hosts if num_processes > 1 else [])]
        procs.append((subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True), out, err))
    results = []
    try:
        for p, out, err in procs:
            p.wait(timeout=300)
            out.seek(0), err.seek(0)
            results.append((p.returncode, out.read(), err.read()))
    finally:
        for p, _, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for code, _, err in results:
        assert code == 0 or not check, err[-3000:]
    return results


def _sample(model, sampling, num_processes):
    ckpt, prompts = model
    args = [f"--checkpoint={ckpt}", f"--prompt_file={prompts}", *COMMON, *sampling]
    if num_processes == 1:  # one process of eight devices: this one (conftest gives it eight)
        r = call_command("sample", *args)
        assert r.returncode == 0, r.stderr[-3000:]
        return [(r.returncode, r.stdout, r.stderr)]
    return launch("lima_jax.sample", args, num_processes)


@pytest.fixture(scope="module")
def sampled_on_one(model):
    """`sample`'s sampled answers as one process: its stdout."""
    return _sample(model, SAMPLED, 1)[0][1]


@pytest.mark.parametrize("sampling", [["--temperature=0", "--print_ids"], SAMPLED], ids=["greedy", "sampled"])
def test_sample_on_two_processes_prints_what_one_prints(model, sampling, sampled_on_one):
    one = sampled_on_one if sampling == SAMPLED else _sample(model, sampling, 1)[0][1]
    (_, first, _), (_, second, _) = _sample(model, sampling, 2)
    assert first == one and second == ""  # process 0 prints, process 1 prints nothing
    assert len(one.splitlines()) == len(PROMPTS) and len(set(one.splitlines())) > 1
    if "--print_ids" not in sampling:
        assert [json.loads(line)["prompt"] for line in one.splitlines()] == PROMPTS


def test_generate_on_two_processes_writes_one_file_as_one_process_would(model, sampled_on_one, tmp_path):
    """evaluate.generate continues a file that has one answer already (process 0 decides what is
    left and tells process 1); the answers are `sample`'s on one process, each written once."""
    ckpt, prompts = model
    expected = {prompt_id(r["prompt"]): r["output"] for r in map(json.loads, sampled_on_one.splitlines())}
    output = tmp_path / "responses.jsonl"
    kept = make_record(PROMPTS[1], "an answer from before", "m")
    output.write_text(json.dumps(kept) + "\n")
    (_, _, err0), (_, _, err1) = launch("lima_jax.evaluate.generate", [
        f"--checkpoint={ckpt}", f"--prompts={prompts}", f"--output={output}", "--generator=m", *COMMON, *SAMPLED], 2)
    assert f"wrote {len(PROMPTS) - 1} new responses" in err0 and "wrote" not in err1
    written = read_responses(output)  # a prompt written twice is an error here
    assert len(output.read_text().splitlines()) == len(PROMPTS) == len(written)
    assert written.pop(kept["id"])["output"] == "an answer from before"
    assert {k: r["output"] for k, r in written.items()} == {k: v for k, v in expected.items() if k != kept["id"]}


def test_a_bad_output_file_stops_every_process_with_process_0s_line(model, tmp_path):
    """Only process 0 reads --output; what it finds wrong reaches process 1 too, so neither waits."""
    ckpt, prompts = model
    output = tmp_path / "responses.jsonl"
    output.write_text("not json\n")
    results = launch("lima_jax.evaluate.generate", [
        f"--checkpoint={ckpt}", f"--prompts={prompts}", f"--output={output}", *COMMON], 2, check=False)
    lines = [err.strip().splitlines()[-1] for _, _, err in results]
    assert [code for code, _, _ in results] == [2, 2], lines
    assert lines[0].startswith(f"error: {output}:1: ") and lines[1] == lines[0].replace("error: ", "error: process 0: ")
    assert output.read_text() == "not json\n"
