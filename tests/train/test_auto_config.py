"""`--config=auto`: the architecture read from the init checkpoint, LIMA's batch and dropout by size,
and a contradicting override named in one line."""
import json

import pytest
from support.hf_reference import random_hf_model
from support.markers import needs_libtpu

from lima_jax.config import load_config, model_config
from lima_jax.data import demo_dir
from lima_jax.errors import LimaError
from lima_jax.model import param_count
from lima_jax.recipe import recipe_for_size
from lima_jax.weights.convert import convert
from support.commands import call_command, run_command

# A Qwen2-style model with Llama 3.1's rope scaling: every new architecture field differs from the defaults.
BASE = model_config(load_config("tiny")).replace(
    family="qwen2", qkv_bias=True, tie_embeddings=True, rope_theta=1e6, rope_scaling="llama3",
    rope_original_max_len=64, max_len=256, bos_id=3, eos_id=4,
)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    random_hf_model(BASE).save_pretrained(root / "hf")
    convert(root / "hf", root / "ckpt", tokenizer=demo_dir() / "tokenizer.model")
    return root


def auto(ckpt, **overrides):
    return load_config("auto", {"init_checkpoint": str(ckpt), **overrides})


@pytest.mark.parametrize("name", ["7b", "13b", "33b", "65b", "llama2_7b", "llama2_70b", "llama3_8b"])
def test_the_size_rule_gives_each_named_config_its_batch_and_dropout(name):
    """The hand-written configs follow LIMA (32/0.3 for 65B, 64/0.2 for smaller models); the rule agrees."""
    config = load_config(name)
    assert recipe_for_size(param_count(model_config(config))) == (config.batch_size, config.model.residual_dropout)


def test_the_architecture_comes_from_the_checkpoint_and_is_printed(pretrained, capsys):
    config = auto(pretrained / "ckpt")
    line = capsys.readouterr().err
    assert model_config(config).replace(residual_dropout=BASE.residual_dropout) == BASE.replace(remat="full")  # float32 on this CPU
    assert (config.batch_size, config.model.residual_dropout) == (64, 0.2)  # a small model
    assert line.startswith(f"--config=auto: {pretrained / 'ckpt'}: qwen2, 0.00B parameters: 5 layers, dim 64, 8 heads (4 key/value)")
    assert "llama3 scaling" in line and "q/k/v biases" in line and "batch 64, top-layer dropout 0.2" in line
    assert line.strip().endswith("computing in float32 with remat full")


def test_auto_computes_in_bfloat16_on_accelerators_and_a_cpu_refuses_to_train_in_it(pretrained):
    """The README's base-model fine-tune took bfloat16 on a CPU and died at the first step, after 1.5
    minutes of compiling: `UNIMPLEMENTED: Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32`."""
    from lima_jax.config import resolve
    from lima_jax.recipe import auto_config, check_platform

    for platform, dtype in (("tpu", "bfloat16"), ("gpu", "bfloat16"), ("cpu", "float32")):
        config = auto_config()
        config.init_checkpoint = str(pretrained / "ckpt")
        resolve(config, platform=platform)
        assert config.model.dtype == dtype, platform
        check_platform(config, platform)
    config.model.dtype = "bfloat16"
    check_platform(config, "tpu")
    with pytest.raises(LimaError, match=r"^config key model.dtype: bfloat16 does not train on a CPU .*use float32 there$"):
        check_platform(config, "cpu")


def test_auto_recomputes_each_layer_on_a_cpu_only_and_keeps_a_remat_given(pretrained):
    """On a CPU the kept activations were most of a fine-tune's host memory (the README's "Memory of a
    CPU fine-tune": 7.3 GB peak for a 135M model at 8 x 256 tokens, 3.5 GB of it activations)."""
    from lima_jax.config import resolve
    from lima_jax.recipe import auto_config

    for platform, remat, given in (("cpu", "full", None), ("tpu", "none", None), ("gpu", "none", None), ("cpu", "save_dots", "save_dots")):
        config = auto_config()
        config.init_checkpoint = str(pretrained / "ckpt")
        if given:
            config.model.remat = given
        resolve(config, platform=platform)
        assert config.model.remat == remat, platform


def test_explicit_overrides_agree_or_fail_naming_the_key(pretrained):
    config = auto(pretrained / "ckpt", **{"model.num_layers": 5, "model.max_len": 128, "batch_size": 8, "model.residual_dropout": 0.1})
    assert (config.model.num_layers, config.model.max_len, config.batch_size, config.model.residual_dropout) == (5, 128, 8, 0.1)
    with pytest.raises(LimaError, match=rf"^config key model.dim: 128 but {pretrained / 'ckpt'} has 64$"):
        auto(pretrained / "ckpt", **{"model.dim": 128})
    with pytest.raises(LimaError, match=r"^config key model.qkv_bias: False but .* has True$"):
        auto(pretrained / "ckpt", **{"model.qkv_bias": False})


def test_without_a_checkpoint_or_with_a_hugging_face_folder_it_says_what_to_do(pretrained):
    with pytest.raises(LimaError, match=r"^config key init_checkpoint: .*pass --config.init_checkpoint=CKPT$"):
        load_config("auto")
    with pytest.raises(LimaError, match=r"a Hugging Face folder; convert it first: python -m lima_jax.convert"):
        auto(pretrained / "hf")


def test_the_command_line_refuses_a_contradiction_in_one_line(pretrained, tmp_path):
    r = call_command("train", "--config=auto", f"--config.init_checkpoint={pretrained / 'ckpt'}", "--config.model.num_heads=4",
                     f"--config.workdir={tmp_path / 'run'}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: config key model.num_heads: 4 but {pretrained / 'ckpt'} has 8"
    assert not (tmp_path / "run").exists()


@needs_libtpu
def test_the_dry_run_compiles_the_checkpoint_s_architecture(pretrained, tmp_path):
    r = run_command("train", "--dry_run", "--topology=v4-8", "--config=auto", f"--config.init_checkpoint={pretrained / 'ckpt'}",
                    "--config.workdir=runs/auto", "--config.data.max_len=128", cwd=tmp_path)  # compiles for TPU: a process of its own
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    trained = BASE.replace(vocab_size=640, vocab_padding=127)  # 512 pieces + EOT, padded
    assert report["config"] == "auto" and report["params"] == param_count(trained)
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("--config=auto: ")][0].endswith(
        "batch 64, top-layer dropout 0.2, computing in bfloat16 with remat none")  # the TPU's, though compiled on a CPU
    assert not (tmp_path / "runs").exists()
