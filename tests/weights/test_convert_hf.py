"""Hugging Face <-> Orbax conversion: exact round trip, a folder transformers loads, clear errors."""
import json
import os

import jax
import numpy as np
import pytest
from support.hf_reference import hf_logits, random_hf_model, torch, transformers
from safetensors.numpy import load_file, save_file

from lima_jax.weights import checkpoint, hf
from lima_jax.weights.convert import convert
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig, model_from_params
from support.commands import call_command

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
        return call_command("convert", *args)

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


# ----------------------------------------------------------------------------------------------
# The LLaMA family: Llama 3.1's rope scaling, Mistral, Qwen2 (q/k/v biases), SmolLM (tied, GQA)
# ----------------------------------------------------------------------------------------------

FAMILIES = {
    "llama3.1": (CFG.replace(rope_theta=500000.0, rope_scaling="llama3", rope_original_max_len=32), "LlamaForCausalLM"),
    "llama-attention-bias": (CFG.replace(qkv_bias=True, out_bias=True), "LlamaForCausalLM"),
    "mistral": (CFG.replace(family="mistral"), "MistralForCausalLM"),
    "qwen2": (CFG.replace(family="qwen2", qkv_bias=True, tie_embeddings=True, rope_theta=1e6), "Qwen2ForCausalLM"),
    "smollm": (CFG.replace(num_heads=8, num_kv_heads=2, tie_embeddings=True, rope_theta=1e5), "LlamaForCausalLM"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_imports_exports_and_matches_transformers(family, tmp_path):
    """transformers' folder -> our checkpoint (same logits) -> a folder transformers loads back as the
    same class, with the same tensors and logits."""
    cfg, architecture = FAMILIES[family]
    reference = random_hf_model(cfg)
    reference.save_pretrained(tmp_path / "hf")
    ckpt = convert(tmp_path / "hf", tmp_path / "ckpt")
    found, params = checkpoint.load_params(ckpt)
    assert found == cfg
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 9))
    expected = hf_logits(reference, tokens)
    np.testing.assert_allclose(np.asarray(model_from_params(found, params)(tokens)), expected, atol=1e-4)

    out = convert(ckpt, tmp_path / "export", output_format="hf")
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == [architecture] and written["model_type"] == cfg.family
    original, exported = _load_folder(tmp_path / "hf"), _load_folder(out)
    assert set(exported) == set(original) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    assert all(np.array_equal(exported[k], original[k]) for k in exported)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(reloaded).__name__ == architecture
    np.testing.assert_array_equal(hf_logits(reloaded, tokens), expected)


LLAMA31_CONFIG = {  # the keys of Llama 3.1 8B's config.json that matter here, as transformers 4 wrote them
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97, "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}


def test_rope_theta_and_scaling_are_read_from_either_place():
    old = hf.config_from_hf(LLAMA31_CONFIG)
    assert (old.rope_theta, old.rope_scaling, old.rope_factor, old.rope_original_max_len) == (500000.0, "llama3", 8.0, 8192)
    # transformers 5 moves both into rope_parameters (and drops the top-level rope_theta)
    new_style = {k: v for k, v in LLAMA31_CONFIG.items() if k not in ("rope_theta", "rope_scaling")}
    new_style["rope_parameters"] = {**LLAMA31_CONFIG["rope_scaling"], "rope_theta": 500000.0}
    assert hf.config_from_hf(new_style) == old
    plain = {**new_style, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert (hf.config_from_hf(plain).rope_theta, hf.config_from_hf(plain).rope_scaling) == (1e6, "none")
    assert hf.config_from_hf({**plain, "rope_parameters": None, "rope_theta": 123.0}).rope_theta == 123.0


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "longrope"])
def test_other_rope_scalings_are_refused_by_name(rope_type):
    config = {**LLAMA31_CONFIG, "rope_scaling": {"rope_type": rope_type, "factor": 4.0}}
    with pytest.raises(LimaError, match=rf"^config.json: rope scaling type '{rope_type}' is not supported"):
        hf.config_from_hf(config)


def test_a_sliding_window_shorter_than_the_context_is_refused():
    mistral = {**LLAMA31_CONFIG, "model_type": "mistral", "rope_scaling": None, "max_position_embeddings": 32768}
    with pytest.raises(LimaError, match=r"sliding_window 4096 is shorter than max_position_embeddings 32768"):
        hf.config_from_hf({**mistral, "sliding_window": 4096})
    assert hf.config_from_hf({**mistral, "sliding_window": None}).family == "mistral"
    assert hf.config_from_hf({**mistral, "sliding_window": 32768}).max_len == 32768
    qwen2 = {**mistral, "model_type": "qwen2", "sliding_window": 4096}
    assert hf.config_from_hf({**qwen2, "use_sliding_window": False}).qkv_bias  # Qwen2 ignores a window it does not use
    with pytest.raises(LimaError, match=r"sliding_window 4096 is shorter than max_position_embeddings 32768"):
        hf.config_from_hf({**qwen2, "use_sliding_window": True})


def test_a_checkpoint_written_before_the_family_fields_still_loads(hf_folder, tmp_path):
    """Older run directories' model JSON lacks rope_scaling, qkv_bias, family...: defaults apply."""
    ckpt = convert(hf_folder, tmp_path / "old")
    record_file = ckpt / "model" / "metadata"
    record = json.loads(record_file.read_text())
    for key in ("rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                "rope_original_max_len", "qkv_bias", "out_bias", "family"):
        del record["config"][key]
    record_file.write_text(json.dumps(record))
    assert checkpoint.load_model_config(ckpt) == CFG
    assert json.loads((convert(ckpt, tmp_path / "hf", output_format="hf") / "config.json").read_text())["model_type"] == "llama"



@pytest.mark.parametrize("family", [f if f == "qwen2" else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES])
def test_each_family_fine_tunes_samples_and_exports(family, tmp_path):
    """`--config=auto` from each family's converted checkpoint: a few steps of LIMA's recipe train every
    tensor (biases included), and the export gives transformers the fine-tuned logits and greedy tokens."""
    from lima_jax.config import load_config
    from lima_jax.data import demo_dir
    from lima_jax.inference.generator import Generator
    from lima_jax.inference.sampler import SamplingParams
    from lima_jax.train.loop import train

    cfg = FAMILIES[family][0].replace(vocab_size=512, max_len=128)  # the demo tokenizer's 512 pieces
    random_hf_model(cfg).save_pretrained(tmp_path / "hf")
    base = convert(tmp_path / "hf", tmp_path / "base", tokenizer=demo_dir() / "tokenizer.model")
    config = load_config("auto", {"init_checkpoint": str(base), "workdir": str(tmp_path / "run"), "num_epochs": 1,
                                  "batch_size": 8, "data.max_len": 64, "data.dev_size": 0, "optim.lr": 1e-3,
                                  "model.dtype": "float32", "checkpoint.async_save": False})  # auto computes in bf16
    assert (config.model.family, config.model.qkv_bias, config.model.rope_scaling) == (cfg.family, cfg.qkv_bias, cfg.rope_scaling)
    assert np.isfinite(train(config)["loss"])
    _, before = checkpoint.load_params(base)
    tuned_cfg, tuned = checkpoint.load_params(config.workdir)
    moved = {jax.tree_util.keystr(k) for k, a in jax.tree_util.tree_leaves_with_path(tuned)
             if not np.array_equal(np.asarray(a)[..., : np.asarray(_at(before, k)).shape[-1]], np.asarray(_at(before, k)))}
    assert moved == {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(tuned)}  # all of it trained

    out = convert(config.workdir, tmp_path / "export", output_format="hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(reloaded).__name__ == FAMILIES[family][1]
    tokens = np.random.RandomState(2).randint(0, tuned_cfg.used_vocab_size, (2, 9))
    ours = np.asarray(model_from_params(tuned_cfg, tuned)(tokens))[..., : tuned_cfg.used_vocab_size]
    np.testing.assert_allclose(hf_logits(reloaded, tokens), ours, atol=1e-4)
    generator = Generator(config.workdir)
    prompt = generator.encode(["What is 3 plus 2?"])
    mine = generator([prompt], SamplingParams(temperature=0.0, max_new_tokens=6), seed=0)[0]
    with torch.no_grad():
        theirs = reloaded.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=len(mine),
                                   min_new_tokens=len(mine))[0, len(prompt):].tolist()
    assert theirs == mine


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_an_export_gives_every_file_the_mode_the_umask_gives(hf_folder, tmp_path):
    """safetensors (0.8) writes through a temporary file created 0600 and renames it into place: the
    weights were private while config.json and the rest were not (safetensors/safetensors#782)."""
    ckpt = convert(hf_folder, tmp_path / "ckpt")
    previous = os.umask(0o027)
    try:
        out = convert(ckpt, tmp_path / "hf", output_format="hf", max_shard_bytes=30_000)
    finally:
        os.umask(previous)
    modes = {name: oct(os.stat(out / name).st_mode & 0o777) for name in os.listdir(out)}
    assert len([name for name in modes if name.endswith(".safetensors")]) > 1  # shards, and the index beside them
    assert set(modes.values()) == {oct(0o640)}, modes
