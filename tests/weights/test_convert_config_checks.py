"""A Hugging Face config.json is checked against itself and the tensors present before anything is built."""
import json
import re

import pytest
from support.models import random_params, tiny

from lima_jax.errors import LimaError
from lima_jax.weights import hf
from lima_jax.weights.convert import convert

CFG = tiny(num_layers=2)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return hf.write(tmp_path_factory.mktemp("hf") / "model", random_params(CFG), CFG)


def _with_config(folder, tmp_path, **changes):
    """A copy of `folder` whose config.json has `changes`."""
    copy = tmp_path / "edited"
    copy.mkdir()
    (copy / "model.safetensors").symlink_to(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **changes}))
    return copy


@pytest.mark.parametrize("layers", [10**12, 3, 1])
def test_a_layer_count_other_than_the_tensors_hold_names_the_key_and_the_file(hf_folder, tmp_path, layers):
    """num_hidden_layers=10**12 used to build a set of 10**13 expected names (memory without bound)."""
    folder = _with_config(hf_folder, tmp_path, num_hidden_layers=layers)
    with pytest.raises(LimaError) as e:
        convert(folder, tmp_path / "out")
    assert str(e.value) == (f"{folder / 'config.json'}: num_hidden_layers is {layers}, but the safetensors in {folder} "
                            "hold 2 layers (model.layers.0 to model.layers.1)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value", [("num_hidden_layers", -1), ("num_hidden_layers", 0), ("hidden_size", -64),
                                        ("num_attention_heads", 0), ("intermediate_size", 1.5), ("vocab_size", "97"),
                                        ("num_key_value_heads", True), ("head_dim", -16), ("max_position_embeddings", 0)])
def test_a_count_that_is_not_a_positive_integer_names_the_key_and_the_file(hf_folder, tmp_path, key, value):
    """num_hidden_layers=-1 used to be "unknown tensor name model.layers.0.input_layernorm.weight"."""
    folder = _with_config(hf_folder, tmp_path, **{key: value})
    with pytest.raises(LimaError) as e:
        convert(folder, tmp_path / "out")
    assert str(e.value) == f"{folder / 'config.json'}: {key} is {json.dumps(value)}; it must be a positive integer"


def test_the_layer_check_counts_the_tensors_of_a_sharded_folder(tmp_path):
    """Shards with an index: the layers are counted across every file."""
    folder = hf.write(tmp_path / "sharded", random_params(CFG), CFG, max_shard_bytes=20_000)
    assert (folder / hf.INDEX).is_file()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 5}))
    with pytest.raises(LimaError, match=re.escape(f"num_hidden_layers is 5, but the safetensors in {folder} hold 2 layers")):
        convert(folder, tmp_path / "out")
    (folder / "config.json").write_text(json.dumps(config))
    assert convert(folder, tmp_path / "out").is_dir()


@pytest.mark.parametrize("layers", [10**12, 3])
def test_an_imposed_layer_count_is_checked_against_the_tensors_before_any_name_is_listed(hf_folder, tmp_path, layers):
    """Every reader (Meta, llama2.c, GGUF, an imposed --config) meets this check too."""
    with pytest.raises(LimaError) as e:
        convert(hf_folder, tmp_path / "out", imposed=CFG.replace(num_layers=layers))
    assert str(e.value) == f"{hf_folder}: the model config has {layers} layers, the tensors 2"
