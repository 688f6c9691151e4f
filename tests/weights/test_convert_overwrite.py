"""`convert --overwrite` replaces a previous export and nothing else: an output that is (or holds) the input
is refused, files the export did not write are kept, and a failed write leaves the previous export whole."""
import os

import pytest
from safetensors.numpy import load_file
from support.commands import call_command
from support.models import random_params, tiny

from lima_jax.errors import LimaError
from lima_jax.weights import checkpoint
from lima_jax.weights.convert import convert
from lima_jax.weights.output import replace_export

CFG = tiny(vocab_size=64, dim=32, ffn_dim=64, num_layers=2)


def _tree(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


@pytest.fixture
def run(tmp_path):
    """A run's workdir: a step checkpoint and the run's own files."""
    workdir = tmp_path / "run"
    checkpoint.save(workdir / "checkpoints" / "1", random_params(CFG), CFG)
    (workdir / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
    return workdir


def test_an_output_that_is_or_holds_the_input_is_refused_and_the_input_kept(run):
    """`--input=RUN --output=RUN --overwrite` used to delete the run, 15 checkpoints and all."""
    before = _tree(run)
    for source in (run, run / "checkpoints" / "1"):
        r = call_command("convert", f"--input={source}", f"--output={run}", "--output_format=hf", "--overwrite")
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip().splitlines()[-1] == (
            f"error: --output {run} is or holds the input {source}; choose an output outside it")
    assert _tree(run) == before


def test_overwriting_an_export_replaces_its_own_files_and_keeps_the_others(run, tmp_path):
    """An export over a folder used to delete every file in it first."""
    out = tmp_path / "export"
    convert(run, out, output_format="hf", max_shard_bytes=20_000)  # several shards and an index
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    (out / "README.md").write_text("my notes")
    (out / "eval").mkdir()
    (out / "eval" / "scores.json").write_text("{}")

    convert(run, out, output_format="hf", overwrite=True)  # one shard now
    assert (out / "README.md").read_text() == "my notes" and (out / "eval" / "scores.json").read_text() == "{}"
    assert not list(out.glob("model-*.safetensors")) and not (out / "model.safetensors.index.json").exists()
    assert set(load_file(out / "model.safetensors")) and (out / "config.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".export")]  # no staging folder left behind


def test_overwriting_a_checkpoint_keeps_the_files_it_did_not_write(run, tmp_path):
    hf_out, ckpt = tmp_path / "hf", tmp_path / "ckpt"
    convert(run, hf_out, output_format="hf")
    convert(hf_out, ckpt)
    (ckpt / "notes.txt").write_text("mine")
    convert(hf_out, ckpt, overwrite=True)
    assert (ckpt / "notes.txt").read_text() == "mine" and checkpoint.is_checkpoint(ckpt)
    assert checkpoint.load_model_config(ckpt).num_layers == CFG.num_layers


def test_a_failed_write_leaves_the_previous_export_whole(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text("old")

    def failing(folder):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("new, half written")
        raise LimaError("disk full")

    with pytest.raises(LimaError, match="disk full"):
        replace_export(out, failing, own=("config.json",))
    assert (out / "config.json").read_text() == "old" and os.listdir(tmp_path) == ["export"]


def test_an_output_whose_folder_cannot_take_it_is_named_as_given_before_anything_is_read(run, tmp_path):
    """A file where the output's folder should be was reported as NotADirectoryError on a hidden staging folder
    (`.sub.partial-21253.orbax-checkpoint-tmp`), after the weights had been read."""
    (tmp_path / "afile").write_text("")
    for fmt in ("hf", "gguf"):
        r = call_command("convert", f"--input={run / 'checkpoints' / '1'}", f"--output={tmp_path / 'afile' / 'out'}",
                         f"--output_format={fmt}")
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip().splitlines()[-1] == (
            f"error: --output {tmp_path / 'afile' / 'out'}: its folder {tmp_path / 'afile'} is a file, not a directory")
