"""Fine-tuning from a converted pretrained checkpoint: the EOT row is added, shapes are checked."""
import numpy as np
import pytest

from lima_jax import sharding
from lima_jax.weights import checkpoint
from lima_jax.config import load_config
from lima_jax.train.vocab import trained_model_config
from lima_jax.data import demo_dir
from lima_jax.errors import LimaError
from lima_jax.train.init_weights import load_pretrained
from lima_jax.train.loop import train


def _config(tmp_path, ckpt, **overrides):
    base = {"workdir": str(tmp_path / "run"), "init_checkpoint": str(ckpt), "num_epochs": 1, "batch_size": 8,
            "data.max_len": 64, "data.dev_size": 8, "checkpoint.async_save": False}
    return load_config("tiny", {**base, **overrides})


def test_eot_row_is_the_mean_of_the_pretrained_rows_and_padding_is_zero(pretrained, tmp_path):
    config = _config(tmp_path, pretrained)
    cfg = trained_model_config(config, 512)  # 512 pieces + EOT, padded to 640 rows
    assert (cfg.vocab_size, cfg.vocab_padding) == (640, 127)
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    params, kept = load_pretrained(config, cfg, mesh)
    assert kept == 512
    _, base = checkpoint.load_params(pretrained)
    embed, head = np.asarray(params["embed"]), np.asarray(params["lm_head"])
    assert embed.shape == (640, 64) and head.shape == (64, 640)
    np.testing.assert_array_equal(embed[:512], np.asarray(base["embed"]))
    np.testing.assert_allclose(embed[512], np.asarray(base["embed"]).mean(0), atol=1e-7)
    np.testing.assert_allclose(head[:, 512], np.asarray(base["lm_head"]).mean(1), atol=1e-7)
    assert not embed[513:].any() and not head[:, 513:].any()


def test_fine_tunes_from_the_checkpoint_with_its_tokenizer(pretrained, tmp_path):
    # LIMA-format files given by path; data.tokenizer left empty: the checkpoint's is used.
    config = _config(tmp_path, pretrained, **{"data.manual_dir": str(demo_dir())})
    last = train(config)
    assert np.isfinite(last["loss"])
    tuned_cfg, tuned = checkpoint.load_params(config.workdir)
    assert tuned["embed"].shape == (640, 64) and tuned_cfg.used_vocab_size == 513

    # A fine-tuned checkpoint (pieces + EOT, padded) starts a second run with its own EOT row.
    again = _config(tmp_path / "again", config.workdir, **{"data.manual_dir": str(demo_dir())})
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    params, kept = load_pretrained(again, trained_model_config(again, 512), mesh)
    assert kept == 513  # its own EOT row kept
    np.testing.assert_array_equal(np.asarray(params["embed"]), np.asarray(tuned["embed"]))


def test_architecture_mismatch_names_the_key(pretrained, tmp_path):
    with pytest.raises(LimaError, match=r"config key model.num_layers: 4 but .* has 5"):
        train(_config(tmp_path, pretrained, **{"model.num_layers": 4}))
