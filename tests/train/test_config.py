"""Configs: names resolve from any directory, the paper's dimensions, overrides and their errors."""

import pytest

from lima_jax.config import available_configs, load_config, model_config
from lima_jax.train.vocab import trained_model_config
from lima_jax.errors import LimaError
from lima_jax.model import param_count
from support.commands import call_command

# (dim, ffn, layers, heads, kv heads, vocab, norm eps, rope theta, batch, top dropout)
EXPECTED = {
    "7b": (4096, 11008, 32, 32, 32, 32000, 1e-6, 1e4, 64, 0.2),
    "13b": (5120, 13824, 40, 40, 40, 32000, 1e-6, 1e4, 64, 0.2),
    "33b": (6656, 17920, 60, 52, 52, 32000, 1e-6, 1e4, 64, 0.2),
    "65b": (8192, 22016, 80, 64, 64, 32000, 1e-6, 1e4, 32, 0.3),
    "llama2_7b": (4096, 11008, 32, 32, 32, 32000, 1e-5, 1e4, 64, 0.2),
    "llama2_70b": (8192, 28672, 80, 64, 8, 32000, 1e-5, 1e4, 32, 0.3),
    "llama3_8b": (4096, 14336, 32, 32, 8, 128256, 1e-5, 5e5, 64, 0.2),
}
# Published parameter counts (billions, two decimals).
PARAMS_B = {"7b": 6.74, "13b": 13.02, "33b": 32.53, "65b": 65.29, "llama2_70b": 68.98, "llama3_8b": 8.03}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_dimensions(name):
    c = load_config(name)
    m = c.model
    got = (m.dim, m.ffn_dim, m.num_layers, m.num_heads, m.num_kv_heads, m.vocab_size, m.norm_eps, m.rope_theta, c.batch_size, m.residual_dropout)
    assert got == EXPECTED[name]
    assert m.max_len >= 2048
    if name in PARAMS_B:
        assert round(param_count(model_config(c)) / 1e9, 2) == PARAMS_B[name]


def test_every_config_file_loads():
    assert set(EXPECTED) | {"tiny"} <= set(available_configs())
    for name in sorted(set(available_configs()) - {"auto"}):  # auto needs a checkpoint: test_auto_config.py
        model_config(load_config(name))


def test_overrides_and_their_errors():
    c = load_config("tiny", {"model.num_layers": 2, "model.remat": "full"})
    assert (c.model.num_layers, c.model.remat) == (2, "full")
    with pytest.raises(LimaError, match="model.dimx: unknown key"):
        load_config("tiny", {"model.dimx": 3})
    with pytest.raises(LimaError, match="model.dim"):
        load_config("tiny", {"model.dim": "abc"})
    with pytest.raises(LimaError, match="model.num_kv_heads: 3 does not divide model.num_heads=8"):
        load_config("tiny", {"model.num_kv_heads": 3})
    with pytest.raises(LimaError, match="model.remat: must be one of"):
        load_config("tiny", {"model.remat": "some"})
    with pytest.raises(LimaError, match="unknown config 'nope'"):
        load_config("nope")


def _cli(tmp_path, *args):
    # From an unrelated working directory, as a user would run it.
    return call_command("convert", *args, cwd=tmp_path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.model.dimx=3", "error: --config.model.dimx: unknown config key 'dimx' in model"),
        ("--config.modelx.dim=3", "error: --config.modelx.dim: unknown config key 'modelx' in the top level"),
        ("--config.model.dim=abc", "error: flag --config.model.dim=abc: invalid literal for int()"),
    ],
)
def test_cli_rejects_bad_overrides_in_one_line(tmp_path, override, message):
    r = _cli(tmp_path, "--input=nowhere", f"--output={tmp_path}/out", "--config=65b", override)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(message), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def _train(*args, cwd):
    return call_command("train", *args, cwd=cwd)


def test_config_given_with_a_space_still_takes_overrides(tmp_path):
    """`--config tiny --config.x=...` is the same command as `--config=tiny --config.x=...`."""
    r = _train("--config", "tiny", "--config.num_epochs=0", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "error: config key num_epochs: must be positive, got 0"


def test_a_workdir_that_is_a_file_is_named_in_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    r = _train("--config=tiny", f"--config.workdir={tmp_path / 'notes.txt'}", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: config key workdir: {tmp_path / 'notes.txt'} is a file, not a directory"
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args", [["--config=nosuch", "--config.num_epochs=2"], ["--config", "nosuch", "--config.num_epochs=2"],
                                  ["--config=nosuch"]])
def test_an_unknown_config_with_overrides_is_one_line(tmp_path, args):
    r = _train(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--config: unknown config 'nosuch'; available: 13b, " in last, r.stderr


@pytest.mark.parametrize("name, pieces, rows", [("65b", None, 32128), ("tiny", 512, 640), ("llama3_8b", None, 128384)])
def test_the_trained_vocabulary_is_padded_to_shard(name, pieces, rows):
    """Pieces + EOT, rounded up to model.vocab_multiple (128): 32,001 would not divide a tensor axis."""
    cfg = trained_model_config(load_config(name), pieces)
    assert cfg.vocab_size == rows and cfg.used_vocab_size == (pieces or load_config(name).model.vocab_size) + 1
    assert trained_model_config(load_config(name, {"model.vocab_multiple": 1}), pieces).vocab_padding == 0


def test_a_parameter_that_cannot_shard_is_said_once(capsys):
    import jax

    from lima_jax import sharding
    from lima_jax.model import param_shardings

    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 8}, jax.devices()[:8])
    cfg = model_config(load_config("tiny")).replace(vocab_size=513)  # unpadded: 513 is odd
    for _ in range(2):
        shardings = param_shardings(cfg, mesh)
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note: embed ")]
    assert notes == ["note: embed is not sharded over mesh axis 'tensor': its dimension 513 does not divide by 8"]
    assert shardings["embed"].spec == jax.sharding.PartitionSpec(None, None)
    assert param_shardings(trained_model_config(load_config("tiny"), 512), mesh)["embed"].spec[0] == "tensor"


@pytest.mark.parametrize("key, value, message", [
    ("optim.lr", -1e-5, "config key optim.lr: must be finite and > 0, got -1e-05"),
    ("optim.lr", float("nan"), "config key optim.lr: must be finite and > 0, got nan"),
    ("optim.end_lr", 0.0, "config key optim.end_lr: must be finite and > 0, got 0.0"),
    ("optim.b1", 1.0, "config key optim.b1: must be in [0, 1), got 1.0"),
    ("optim.b2", -0.1, "config key optim.b2: must be in [0, 1), got -0.1"),
    ("optim.eps", 0.0, "config key optim.eps: must be finite and > 0, got 0.0"),
    ("optim.weight_decay", -0.1, "config key optim.weight_decay: must be finite and >= 0, got -0.1"),
    ("optim.grad_clip", float("inf"), "config key optim.grad_clip: must be finite and >= 0, got inf"),
])
def test_optimizer_settings_are_checked_before_any_work(key, value, message):
    with pytest.raises(LimaError) as e:
        load_config("tiny", {key: value})
    assert str(e.value) == message


def test_a_negative_learning_rate_stops_the_command_in_one_line(tmp_path):
    r = _train("--config=tiny", "--config.optim.lr=-1e-5", f"--config.workdir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "error: config key optim.lr: must be finite and > 0, got -1e-05"
    assert not (tmp_path / "run").exists()


def test_log_every_is_no_key():
    """`log_every` was validated and recorded but read by nothing (every step is logged): a run given
    --config.log_every=10 logged every step all the same. Now it is refused as unknown."""
    with pytest.raises(LimaError, match="log_every: unknown key"):
        load_config("tiny", {"log_every": 10})
