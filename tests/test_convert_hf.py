"""Hugging Face <-> Orbax conversion: exact round trip, a folder transformers loads, clear errors."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from hf_reference import hf_logits, hf_state, random_hf_model, torch, transformers
from safetensors.numpy import load_file, save_file

from lima_jax.weights import checkpoint
from lima_jax.weights.convert import convert
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig, model_from_params

CFG = ModelConfig(vocab_size=97, dim=64, num_layers=3, num_heads=4, num_kv_heads=2, ffn_dim=96, max_len=64)


def _load_folder(folder):
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "model"
    random_hf_model(CFG).save_pretrained(folder)
    return folder


def test_round_trip_is_bit_exact_and_loads_in_transformers(hf_folder, tmp_path):
    ckpt = convert(hf_folder, tmp_path / "ckpt")
    out = convert(ckpt, tmp_path / "hf", output_format="hf", max_shard_bytes=30_000)
    original, exported = _load_folder(hf_folder), _load_folder(out)
    assert set(original) == set(exported)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    assert set(index["weight_map"]) == set(original)

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tokens = np.arange(1, 12)[None]
    np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(random_hf_model(CFG), tokens))


def test_converted_checkpoint_matches_transformers_logits(hf_folder, tmp_path):
    cfg, params = checkpoint.load_params(convert(hf_folder, tmp_path / "ckpt"))
    assert cfg == CFG
    tokens = np.random.RandomState(1).randint(0, CFG.vocab_size, (2, 9))
    ours = np.asarray(model_from_params(cfg, params)(tokens))
    np.testing.assert_allclose(ours, hf_logits(random_hf_model(CFG), tokens), atol=1e-4)


def test_bf16_weights_keep_their_dtype(tmp_path):
    folder = tmp_path / "bf16"
    random_hf_model(CFG).to(torch.bfloat16).save_pretrained(folder)
    ckpt = convert(folder, tmp_path / "ckpt")
    assert {str(d) for d in jax.tree.leaves(checkpoint.stored_dtypes(ckpt))} == {"bfloat16"}
    out = convert(ckpt, tmp_path / "hf", output_format="hf")
    original, exported = _load_folder(folder), _load_folder(out)
    assert all(np.array_equal(exported[k].view(np.uint16), original[k].view(np.uint16)) for k in original)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_shape_mismatch_names_the_tensor(hf_folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((hf_folder / "config.json").read_text())
    tensors = load_file(hf_folder / "model.safetensors")
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((64, 64), np.float32)
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(LimaError, match=r"tensor model\.layers\.1\.self_attn\.k_proj\.weight: expected shape \(32, 64\), found \(64, 64\)"):
        convert(bad, tmp_path / "out")
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((32, 64), np.float32)
    tensors["model.layers.1.self_attn.q_norm.weight"] = np.zeros((64,), np.float32)
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(LimaError, match=r"unknown tensor name model\.layers\.1\.self_attn\.q_norm\.weight"):
        convert(bad, tmp_path / "out")
    del tensors["model.layers.1.self_attn.q_norm.weight"], tensors["model.norm.weight"]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(LimaError, match=r"missing tensor model\.norm\.weight"):
        convert(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_imposed_config_is_checked(hf_folder, tmp_path):
    with pytest.raises(LimaError, match="expected shape"):
        convert(hf_folder, tmp_path / "out", imposed=CFG.replace(ffn_dim=128))


def test_cli_errors_are_one_line_and_nothing_is_overwritten(hf_folder, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lima_jax.convert", *args], capture_output=True, text=True)

    r = cli(f"--input={tmp_path}/missing", f"--output={tmp_path}/out")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"error: --input {tmp_path}/missing: no such file or directory"

    keep = tmp_path / "existing"
    keep.mkdir()
    (keep / "precious.txt").write_text("mine")
    r = cli(f"--input={hf_folder}", f"--output={keep}")
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert (keep / "precious.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    r = cli(f"--input={empty}", f"--output={tmp_path}/o2", "--input_format=hf")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: {empty}/config.json: missing key hidden_size"
    r = cli(f"--input={empty}", f"--output={tmp_path}/o2", "--input_format=hf", "--verbose")
    assert "Traceback" in r.stderr


def test_export_drops_the_vocabulary_padding(hf_folder, tmp_path):
    """A trained checkpoint pads its vocabulary rows for sharding; transformers gets only the real
    rows, so the exported model's logits are ours over the real ids and it can never emit padding."""
    cfg = CFG.replace(vocab_size=128, vocab_padding=31)
    rng = np.random.default_rng(2)
    params = dict(checkpoint.load_params(convert(hf_folder, tmp_path / "base"))[1])
    params["embed"] = np.concatenate([params["embed"], rng.standard_normal((31, CFG.dim), np.float32)])
    params["lm_head"] = np.concatenate([params["lm_head"], rng.standard_normal((CFG.dim, 31), np.float32)], axis=1)
    ckpt = checkpoint.save(tmp_path / "padded", params, cfg)
    out = convert(ckpt, tmp_path / "export", output_format="hf")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 97
    exported = _load_folder(out)
    assert exported["model.embed_tokens.weight"].shape == (97, CFG.dim) and exported["lm_head.weight"].shape == (97, CFG.dim)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tokens = np.random.RandomState(1).randint(0, 97, (2, 9))
    ours = np.asarray(model_from_params(cfg, params)(tokens))[..., :97]
    np.testing.assert_allclose(hf_logits(reloaded, tokens), ours, atol=1e-4)
