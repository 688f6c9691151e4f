"""Generating a response file: every prompt answered once, and an interrupted run continues."""
import json
import subprocess
import sys

import pytest
from hf_reference import random_hf_model

from lima_jax.weights.convert import convert
from lima_jax.data import demo_dir
from lima_jax.evaluate.responses import generate_responses
from lima_jax.evaluate.responses import prompt_id, read_responses
from lima_jax.model import ModelConfig
from lima_jax.inference.generator import Generator
from lima_jax.inference.sampler import SamplingParams

PROMPTS = [["What is 2 plus 2?"], ["Name a color."], ["Hi", "Hello!", "How are you?"], ["Spell cat backwards."], ["Why?"]]
PARAMS = SamplingParams(max_new_tokens=6)


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    cfg = ModelConfig(vocab_size=513, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64, max_len=128)
    random_hf_model(cfg).save_pretrained(root / "hf")
    ckpt = convert(root / "hf", root / "ckpt", tokenizer=demo_dir() / "tokenizer.model")
    generator = Generator(str(ckpt))
    generator.path = ckpt  # for the CLI test
    return generator


def test_an_interrupted_run_continues_where_it_stopped(generator, tmp_path):
    whole = tmp_path / "whole.jsonl"
    assert generate_responses(generator, PROMPTS, whole, "m", PARAMS, seed=0, batch_size=2) == 5
    expected = read_responses(whole)
    assert set(expected) == {prompt_id(p) for p in PROMPTS}

    cut = tmp_path / "cut.jsonl"
    generate_responses(generator, PROMPTS[:3], cut, "m", PARAMS, seed=0, batch_size=2)
    with cut.open("a") as f:
        f.write('{"id": "half a line')  # killed mid-write
    assert generate_responses(generator, PROMPTS, cut, "m", PARAMS, seed=0, batch_size=2) == 2
    assert read_responses(cut) == expected  # same outputs as the uninterrupted run
    assert generate_responses(generator, PROMPTS, cut, "m", PARAMS, seed=0, batch_size=2) == 0


def test_cli_writes_the_response_file(generator, tmp_path):
    prompts = tmp_path / "test.jsonl"
    prompts.write_text("".join(json.dumps({"conversations": p + (["an answer"] if len(p) == 1 else [])}) + "\n" for p in PROMPTS[:2]))
    out = tmp_path / "out.jsonl"
    ckpt = generator.path
    r = subprocess.run([sys.executable, "-m", "lima_jax.evaluate.generate", f"--checkpoint={ckpt}", f"--prompts={prompts}",
                        f"--output={out}", "--generator=tiny", "--max_new_tokens=5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    records = list(read_responses(out).values())
    assert [r["prompt"] for r in records] == PROMPTS[:2] and all(r["generator"] == "tiny" for r in records)
