"""Generating a response file: every prompt answered once, and an interrupted run continues."""
import dataclasses
import json

import pytest
from support.hf_reference import random_hf_model

from lima_jax.weights.convert import convert
from lima_jax.data import demo_dir
from lima_jax.errors import LimaError
from lima_jax.evaluate.answers.generation import generate_responses, generation_settings, settings_path
from lima_jax.evaluate.answers.records import prompt_id
from lima_jax.evaluate.answers.formats import read_responses
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
    from lima_jax.evaluate.answers.generation import generate_responses

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


def test_a_file_made_with_another_checkpoint_or_other_settings_is_refused_and_left_whole(generator, tmp_path):
    """Continuing a file after changing the temperature wrote 0 new responses: the file recorded
    neither the checkpoint nor the sampling, so the old answers passed for the new settings."""
    out = tmp_path / "responses.jsonl"
    made = generation_settings(generator.path, PARAMS, 0)
    assert generate_responses(generator, PROMPTS[:2], out, "m", PARAMS, 0, 2, settings=made) == 2
    assert json.loads(settings_path(out).read_text()) == {
        "checkpoint": str(generator.path), "step": None, "temperature": 0.7, "top_p": 0.9,
        "repetition_penalty": 1.2, "max_new_tokens": 6, "seed": 0}
    text = out.read_text()
    others = [("temperature", "0.7", "0.2", generation_settings(generator.path, dataclasses.replace(PARAMS, temperature=0.2), 0)),
              ("seed", "0", "3", generation_settings(generator.path, PARAMS, 3)),
              ("step", "None", "241", generation_settings(tmp_path / "run" / "checkpoints" / "241", PARAMS, 0))]
    for key, old, new, settings in others:
        with pytest.raises(LimaError, match=rf"^{out} holds answers generated with {key}={old}, not {new} \(recorded in "
                                            rf"{settings_path(out)}\): name another --output \(or pass --overwrite"):
            generate_responses(generator, PROMPTS, out, "m", PARAMS, 0, 2, settings=settings)
    assert out.read_text() == text
    assert generate_responses(generator, PROMPTS, out, "m", PARAMS, 0, 2, settings=made) == 3  # the same: continued


def test_a_file_from_before_the_record_is_continued_and_then_recorded(generator, tmp_path):
    out = tmp_path / "responses.jsonl"
    assert generate_responses(generator, PROMPTS[:2], out, "m", PARAMS, 0, 2) == 2  # no record, as files were
    assert not settings_path(out).exists()
    made = generation_settings(generator.path, PARAMS, 0)
    assert generate_responses(generator, PROMPTS, out, "m", PARAMS, 0, 2, settings=made) == 3
    assert json.loads(settings_path(out).read_text()) == made
    assert len(read_responses(out)) == 5  # the record beside it leaves the file as judging reads it
    settings_path(out).write_text('{"step": nu')  # damaged: refused, not taken for "no record"
    with pytest.raises(LimaError, match=rf"^{settings_path(out)}: not a JSON object; it records how {out} was generated"):
        generate_responses(generator, PROMPTS, out, "m", PARAMS, 0, 2, settings=made)


def test_cli_refuses_to_continue_with_another_temperature_until_overwrite(generator, tmp_path):
    prompts = tmp_path / "test.jsonl"
    prompts.write_text("".join(json.dumps({"conversations": p}) + "\n" for p in PROMPTS[:2]))
    out = tmp_path / "out.jsonl"
    common = [f"--checkpoint={generator.path}", f"--prompts={prompts}", f"--output={out}", "--max_new_tokens=5"]
    assert call_command("evaluate.generate", *common).returncode == 0
    text = out.read_text()
    r = call_command("evaluate.generate", *common, "--temperature=0.2")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"error: {out} holds answers generated with temperature=0.7, not 0.2 (recorded in {settings_path(out)}): "
        "name another --output (or pass --overwrite to replace it)")
    assert out.read_text() == text
    r = call_command("evaluate.generate", *common, "--temperature=0.2", "--overwrite")
    assert r.returncode == 0 and "wrote 2 new responses" in r.stderr, r.stderr[-2000:]
    assert json.loads(settings_path(out).read_text())["temperature"] == 0.2
