"""Meta's original release format: model-parallel shards merged, q/k permuted, checked against
transformers and against the Hugging Face import of the same weights."""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from lima_jax.weights import meta as meta_format, names as weights
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig, model_from_params
from support.meta import write_meta_folder

torch = pytest.importorskip("torch", reason="Meta checkpoints are torch .pth files: pip install torch==2.13.0")

GQA = ModelConfig(vocab_size=97, dim=64, num_layers=3, num_heads=4, num_kv_heads=2, ffn_dim=96, norm_eps=1e-5)
CASES = {
    "gqa-2-shards": (GQA, 2, False),
    "mha-1-shard": (GQA.replace(num_kv_heads=4), 1, False),
    "llama3-vocab-parallel-2-shards": (GQA.replace(rope_theta=500000.0), 2, True),
}


def _hf(cfg: ModelConfig, seed: int = 0):
    from support.hf_reference import hf_state, random_hf_model

    model = random_hf_model(cfg, seed=seed)
    return model, hf_state(model)


def _load(folder) -> tuple[ModelConfig, dict]:
    cfg, names, get = meta_format.read(folder)
    return cfg, weights.params_from_hf(names, get, cfg, source=str(folder))


@pytest.mark.parametrize("case", CASES)
def test_meta_folder_matches_hf_import_and_transformers(case, tmp_path):
    from support.hf_reference import hf_logits

    cfg, shards, vocab_parallel = CASES[case]
    model, state = _hf(cfg)
    folder = write_meta_folder(state, cfg, tmp_path / "meta", shards, vocab_parallel=vocab_parallel)

    got_cfg, names, _ = meta_format.read(folder)
    arch = ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads", "ffn_dim", "norm_eps", "rope_theta")
    assert {k: getattr(got_cfg, k) for k in arch} == {k: getattr(cfg, k) for k in arch}
    assert sorted(names) == sorted(state)

    got_cfg, params = _load(folder)
    direct = weights.params_from_hf(list(state), state.__getitem__, cfg, source="hf")
    assert jax.tree.structure(params) == jax.tree.structure(direct)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(direct)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)  # bit-exact: merging and permuting only move bytes

    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 13))
    ours = np.asarray(model_from_params(got_cfg, params)(jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_logits(model, tokens), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_kept_and_shards_memory_mapped(dtype, tmp_path, monkeypatch):
    cfg = GQA.replace(num_layers=1)
    _, state = _hf(cfg)
    torch_dtype = getattr(torch, dtype)
    folder = write_meta_folder(state, cfg, tmp_path, 2, dtype=torch_dtype)

    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    _, _, get = meta_format.read(folder)
    assert len(calls) == 2 and all(kw.get("mmap") and kw.get("weights_only") for kw in calls)

    for name in ("model.layers.0.self_attn.k_proj.weight", "model.embed_tokens.weight", "model.norm.weight"):
        w = get(name)
        assert w.dtype == np.dtype(getattr(ml_dtypes, dtype) if dtype == "bfloat16" else dtype)
        # rounding is elementwise, so permuting and merging the half-precision shards must give
        # exactly the Hugging Face tensor rounded to that dtype
        want = torch.from_numpy(state[name]).to(torch_dtype).view(torch.int16).numpy()
        np.testing.assert_array_equal(w.view(np.int16), want)


def test_missing_params_json(tmp_path):
    with pytest.raises(LimaError, match="missing params.json"):
        meta_format.read(tmp_path)


def test_missing_shards(tmp_path):
    cfg = GQA.replace(num_layers=1)
    (tmp_path / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 1, "n_heads": 4, "norm_eps": 1e-5}))
    with pytest.raises(LimaError, match=r"missing consolidated\.00\.pth"):
        meta_format.read(tmp_path)
    _, state = _hf(cfg)
    folder = write_meta_folder(state, cfg, tmp_path / "three", 3)
    (folder / "consolidated.01.pth").unlink()
    with pytest.raises(LimaError, match=r"missing consolidated\.01\.pth"):
        meta_format.read(folder)


def _edit_shards(folder: pathlib.Path, edit) -> None:
    for f in sorted(folder.glob("consolidated.*.pth")):
        shard = torch.load(f, weights_only=True)
        edit(int(f.name.split(".")[1]), shard)
        torch.save(shard, f)


def test_unknown_tensor_name(tmp_path):
    cfg = GQA.replace(num_layers=1)
    folder = write_meta_folder(_hf(cfg)[1], cfg, tmp_path, 2)
    _edit_shards(folder, lambda k, s: s.update({"layers.0.attention.wz.weight": torch.zeros(2)}))
    with pytest.raises(LimaError, match=r"unknown tensor name layers\.0\.attention\.wz\.weight"):
        meta_format.read(folder)


def test_wrong_shaped_tensor(tmp_path):
    cfg = GQA.replace(num_layers=2)
    folder = write_meta_folder(_hf(cfg)[1], cfg, tmp_path, 2)
    name = "layers.1.attention.wv.weight"
    _edit_shards(folder, lambda k, s: s.update({name: s[name][:-1].clone()}))  # one row short per shard
    with pytest.raises(LimaError) as err:
        _load(folder)
    msg = str(err.value)
    assert "layers.1.attention.wv.weight" in msg and "model.layers.1.self_attn.v_proj.weight" in msg
    assert "expected shape (32, 64), found (30, 64)" in msg


def test_replicated_norm_that_differs_between_shards(tmp_path):
    cfg = GQA.replace(num_layers=1)
    folder = write_meta_folder(_hf(cfg)[1], cfg, tmp_path, 2)
    _edit_shards(folder, lambda k, s: k == 1 and s["layers.0.ffn_norm.weight"].add_(1.0))
    with pytest.raises(LimaError, match=r"consolidated\.01\.pth: layers\.0\.ffn_norm\.weight differs"):
        _load(folder)
