"""Weights & Biases beside metrics.jsonl (`--config.log.wandb=PROJECT`), offline: what W&B wrote is read
back from its run file, and a resumed run continues the same W&B run."""
import json
import shutil
import struct
import sys

import pytest
from support.commands import call_command
from support.training import checkpoint_steps, read_metrics, train_args, two_step_config

from lima_jax.train.wandb_sink import RUN_ID_FILE, WandbSink

NEEDS_WANDB = "needs wandb: pip install wandb (the test extra)"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline, writing under tmp_path/wandb_dir, quiet."""
    pytest.importorskip("wandb", reason=NEEDS_WANDB)
    folder = tmp_path / "wandb_dir"
    folder.mkdir()
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(folder), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    return folder / "wandb"


def records(path) -> list:
    """The Record protos of a .wandb file: a 7-byte header (":W&B", magic, version), then LevelDB's log
    format: 32 KiB blocks of chunks (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, out, parts = path.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's zero-filled tail
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(parts))
            parts = b""
    return out


def offline_run(folder) -> tuple[str, dict, dict[int, dict]]:
    """The run id, config and history ({step: {key: value}}) of the one offline run in `folder`."""
    (run_file,) = folder.glob("run-*.wandb")
    run_id, config, history = None, {}, {}
    for r in records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id, config = r.run.run_id, {i.key: json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(r.history.step.num, {}).update(row)
    return run_id, config, history


def check_history(history: dict[int, dict], metrics: list[dict]) -> None:
    """Every metrics.jsonl value at its step, as W&B holds it."""
    for record in metrics:
        row = history[record["step"]]
        if "loss" in record:
            for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu", "padding_fraction", "epoch"):
                assert row[f"train/{key}"] == pytest.approx(record[key], rel=1e-6), key
        elif record["dev_loss"] is not None:
            assert row["dev/loss"] == pytest.approx(record["dev_loss"], rel=1e-6)


def test_each_step_and_dev_loss_go_to_wandb_and_a_resume_continues_the_same_run(tmp_path, offline):
    """Two epochs of two steps; then the last checkpoint is dropped (as if killed before it was saved) and
    the same config resumes from step 2: a second offline run directory with the same W&B run id. 25-30 s
    on 2 cores: two trainings, since a resume is what it checks (no session fixture logs to W&B)."""
    from lima_jax.data import demo_dir
    from lima_jax.train.loop import train

    config = two_step_config(tmp_path, num_epochs=2, **{"log.wandb": "lima-test", "log.wandb_name": "tiny-run",
                                                         "data.tokenizer": str(demo_dir() / "tokenizer.model")})
    workdir = tmp_path / "run"
    train(config)
    run_id = (workdir / RUN_ID_FILE).read_text().strip()
    (first,) = offline.glob(f"offline-run-*-{run_id}")
    got_id, wb_config, history = offline_run(first)
    assert got_id == run_id
    assert wb_config["name"] == "tiny" and wb_config["num_epochs"] == 2 and wb_config["model"]["dim"] == config.model.dim
    assert wb_config["log"]["wandb"] == "lima-test"
    metrics = read_metrics(workdir)
    assert sorted(history) == [1, 2, 3, 4] and [r["step"] for r in metrics if "dev_loss" in r] == [2, 4]
    check_history(history, metrics)

    shutil.rmtree(workdir / "checkpoints" / "4")
    assert checkpoint_steps(workdir) == [2]
    config.log.wandb_name = "tiny-run-resumed"  # the log keys are no part of a run's identity: it resumes
    assert train(config)["status"] == "finished"
    assert (workdir / RUN_ID_FILE).read_text().strip() == run_id
    (second,) = set(offline.glob(f"offline-run-*-{run_id}")) - {first}
    got_id, _, history = offline_run(second)
    assert got_id == run_id and sorted(history) == [3, 4]  # the training's step numbers: the curve continues
    check_history(history, [r for r in read_metrics(workdir) if r["step"] > 2])


def test_without_the_wandb_package_the_run_stops_in_one_line_before_starting(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as if it were not installed
    r = call_command("train", *train_args(tmp_path / "run", "--config.log.wandb=lima-test"))
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].endswith("config key log.wandb: needs the wandb package: pip install wandb")
    assert not (tmp_path / "run").exists()


def test_a_bad_project_name_is_one_line_naming_the_key(tmp_path):
    r = call_command("train", *train_args(tmp_path / "run", "--config.log.wandb=team/project"))
    assert r.returncode != 0 and "config key log.wandb: a W&B name may not hold any of" in r.stderr.strip().splitlines()[-1]


def test_a_wandb_error_is_one_warning_and_training_goes_on(tmp_path, monkeypatch, capsys):
    """W&B is a view of the run: a failing init or log never stops it."""
    from lima_jax.config import load_config
    from lima_jax.storage.paths import user_path

    wandb = pytest.importorskip("wandb", reason=NEEDS_WANDB)

    config = load_config("tiny", {"log.wandb": "lima-test"})

    def fail(*args, **kwargs):
        raise RuntimeError("network is unreachable")

    monkeypatch.setattr(wandb, "init", fail)
    sink = WandbSink(config, {}, user_path(str(tmp_path)))
    sink.log({"train/loss": 1.0}, step=1)
    sink.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: starting Weights & Biases failed (RuntimeError: network is unreachable)")

    class Broken:
        def log(self, values, step):
            raise OSError("disk full")

        def finish(self):
            raise AssertionError("a failed run is not finished again")

    monkeypatch.setattr(wandb, "init", lambda **kwargs: Broken())
    sink = WandbSink(config, {}, user_path(str(tmp_path)))
    sink.log({"train/loss": 1.0}, step=1)
    sink.log({"train/loss": 0.5}, step=2)
    sink.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["warning: logging to Weights & Biases failed (OSError: disk full); training goes on without it "
                     "(metrics.jsonl and TensorBoard are still written)"]
