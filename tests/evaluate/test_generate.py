"""Generating a response file: every prompt answered once, and an interrupted run continues."""
import json

import pytest
from support.hf_reference import random_hf_model

from lima_jax.weights.convert import convert
from lima_jax.data import demo_dir
from lima_jax.errors import LimaError
from lima_jax.evaluate.responses import generate_responses
from lima_jax.evaluate.responses import prompt_id, read_responses
from lima_jax.model import ModelConfig
from lima_jax.inference.generator import Generator
from lima_jax.inference.sampler import SamplingParams
from support.commands import call_command

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
    r = call_command("evaluate.generate", f"--checkpoint={ckpt}", f"--prompts={prompts}",
                     f"--output={out}", "--generator=tiny", "--max_new_tokens=5")
    assert r.returncode == 0, r.stderr[-2000:]
    records = list(read_responses(out).values())
    assert [r["prompt"] for r in records] == PROMPTS[:2] and all(r["generator"] == "tiny" for r in records)


def test_generate_refuses_an_output_that_is_not_a_response_file_and_leaves_it_whole(tmp_path):
    """`evaluate.generate --output=EXISTING` used to cut the last line of a prompts file before failing."""
    from lima_jax.evaluate.responses import generate_responses

    output = tmp_path / "test.jsonl"
    text = '{"conversations": ["What is 2 plus 2?"]}\n{"conversations": ["Name a col'
    output.write_text(text)
    with pytest.raises(LimaError, match=rf"^{output}:1: missing 'prompt'; it is not a response file: name another file$"):
        generate_responses(None, [["What is 2 plus 2?"]], output, "ours", None, 0, 1)
    assert output.read_text() == text
    notes = tmp_path / "notes.txt"
    notes.write_text("remember to judge epoch 5")
    with pytest.raises(LimaError, match=rf"^{notes}:1: not JSON; it is not a response file"):
        generate_responses(None, [["What is 2 plus 2?"]], notes, "ours", None, 0, 1)
    assert notes.read_text() == "remember to judge epoch 5"
