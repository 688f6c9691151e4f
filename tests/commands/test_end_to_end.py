"""The issue's finish line: converted checkpoints continue a prompt greedily, token for token, as
`transformers.generate` does, through the command lines a user runs.

The weights are a real pretrained model (llama2.c's stories260K); the Hugging Face folder is written
by transformers itself, and the Meta folder is that model split into 2 model-parallel shards.
"""

import pytest
from support.paths import STORIES260K, require
from support.hf_reference import torch, transformers
from support.meta import write_meta_folder
from support.commands import call_command

PROMPT = [1, 403, 407, 262]
NEW_TOKENS = 24


def _run(module, *args):
    r = call_command(module, *args)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _sample(ckpt) -> list[int]:
    out = _run("sample", f"--checkpoint={ckpt}", f"--prompt_ids={','.join(map(str, PROMPT))}",
               "--temperature=0", f"--max_new_tokens={NEW_TOKENS}", "--print_ids")
    return [int(t) for t in out.strip().splitlines()[-1].split()]


def _generate(model) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, len(PROMPT):].tolist()


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    """stories260K as a transformers model, and a folder transformers itself wrote."""
    root = tmp_path_factory.mktemp("stories")
    _run("convert", f"--input={require(STORIES260K)}", f"--output={root / 'ckpt'}")
    _run("convert", f"--input={root / 'ckpt'}", "--output_format=hf", f"--output={root / 'exported'}")
    model = transformers.AutoModelForCausalLM.from_pretrained(root / "exported").eval()
    model.save_pretrained(root / "hf")
    return root, model


def test_llama2c_checkpoint_generates_like_transformers(stories):
    root, model = stories
    expected = _generate(model)
    assert len(set(expected)) > 3  # a real continuation, not one repeated token
    assert _sample(root / "ckpt") == expected


def test_hf_folder_generates_like_transformers(stories):
    root, model = stories
    _run("convert", f"--input={root / 'hf'}", "--input_format=hf", f"--output={root / 'from_hf'}")
    assert _sample(root / "from_hf") == _generate(model)


def test_sharded_meta_folder_generates_like_transformers(stories):
    root, model = stories
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = __import__("lima_jax.weights.hf", fromlist=["x"]).config_from_hf(model.config.to_dict())
    folder = write_meta_folder(state, cfg, root / "meta", num_shards=2)
    assert len(list(folder.glob("consolidated.*.pth"))) == 2
    _run("convert", f"--input={folder}", "--input_format=meta", f"--output={root / 'from_meta'}")
    assert _sample(root / "from_meta") == _generate(model)


def test_sample_resolves_a_workdir_to_its_latest_complete_step(stories, tmp_path):
    root, model = stories
    import shutil

    steps = tmp_path / "run" / "checkpoints"
    shutil.copytree(root / "ckpt", steps / "100")
    (steps / "200.orbax-checkpoint-tmp-1").mkdir(parents=True)  # a half-written step is never picked
    assert _sample(tmp_path / "run") == _generate(model)
    assert _sample(steps / "100") == _generate(model)
