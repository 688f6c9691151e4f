"""A LoRA run's exports (issue 24): `--output_format=peft` writes the adapters that `peft` puts on the base's
Hugging Face export, giving our logits and greedy tokens; `hf` and `gguf` write the merged model with the
run's EOT; a full model is refused in one line. The session's `lora_run` (shared with tests/lora) takes
about a minute; the tests themselves about half of one."""
import json

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from support.commands import call_command
from support.hf_reference import hf_logits, random_hf_model, torch, transformers

from lima_jax.errors import LimaError
from lima_jax.inference.generator import Generator
from lima_jax.inference.sampler import SamplingParams
from lima_jax.lora import adapters
from lima_jax.lora.spec import LoraSpec
from lima_jax.model import ModelConfig, model_from_params
from lima_jax.weights import checkpoint, gguf as gguf_format, hf, peft as peft_format
from lima_jax.weights.convert import convert
from lima_jax.weights.names import params_from_hf

peft = pytest.importorskip("peft", reason="peft loads the PEFT export: pip install peft==0.21.2 (the test extra)")

EOT, USED = 512, 513  # LIMA's new EOT on the demo tokenizer's 512 pieces: the run's rows
CONVERSATIONS = [["What is 3 plus 2?"], ["Tell me a story.", "Once upon a time.", "And then?"]]
TOKENS = np.random.default_rng(3).integers(0, USED, (2, 12))
TOKENS[:, 5] = EOT  # the trained row in and out


@pytest.fixture(scope="module")
def ours(lora_run):
    """The run's model: the adapters merged onto its plain float32 base (`lora.adapters.merge`), as our sampler runs it."""
    cfg, params = checkpoint.load_params(lora_run)
    assert checkpoint.adapter_record(checkpoint.resolve(lora_run))["spec"]["base_dtype"] == ""  # not quantized
    return cfg, params, np.asarray(model_from_params(cfg, params)(TOKENS))[..., :USED]


def _greedy(lora_run, model, tokenizer, generation_config=None):
    """Our greedy answers (what `sample --temperature=0` gives), asserted equal to transformers' `generate` on
    the prompts the exported chat template renders."""
    generator = Generator(lora_run)
    messages = [[{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)] for turns in CONVERSATIONS]
    prompts = [list(tokenizer.apply_chat_template(m, add_generation_prompt=True, return_dict=True)["input_ids"]) for m in messages]
    assert prompts == [generator.encode(turns) for turns in CONVERSATIONS]
    mine = generator(prompts, SamplingParams(temperature=0.0, max_new_tokens=12), seed=0)
    for prompt, answer in zip(prompts, mine):
        with torch.no_grad():
            theirs = model.generate(torch.tensor([prompt]), generation_config=generation_config, do_sample=False,
                                    max_new_tokens=12)[0, len(prompt):].tolist()
        assert theirs == answer
    return mine


def test_the_peft_export_on_the_bases_hf_export_gives_our_logits_and_greedy_tokens(pretrained, lora_run, ours, tmp_path):
    # ~20 s on a loaded 2-core machine: the first test here to compile our sampler and to import peft.
    out = convert(lora_run, tmp_path / "adapter", output_format="peft")
    # What a user runs: the base's Hugging Face export, grown to the exported tokenizer, wearing the adapters.
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    base = transformers.AutoModelForCausalLM.from_pretrained(str(pretrained.parent / "hf"), attn_implementation="eager")
    assert base.config.vocab_size == EOT and len(tokenizer) == USED and tokenizer.convert_ids_to_tokens(EOT) == "<|lima_eot|>"
    base.resize_token_embeddings(len(tokenizer))
    model = peft.PeftModel.from_pretrained(base, str(out)).eval()
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["trainable_token_indices"]) == (4, 16, {"embed_tokens": [EOT], "lm_head": [EOT]})

    np.testing.assert_allclose(hf_logits(model, TOKENS), ours[2], atol=1e-4)
    with model.disable_adapter():  # the adapters are what makes it ours
        assert np.abs(hf_logits(model, TOKENS)[:, :, :EOT] - ours[2][:, :, :EOT]).max() > 0.1
    generation = transformers.GenerationConfig.from_pretrained(str(out))
    assert generation.eos_token_id == [2, EOT]
    _greedy(lora_run, model, tokenizer, generation)

    # The file is PEFT's own: saving the loaded model writes the same tensors under the same names.
    model.save_pretrained(tmp_path / "resaved")
    mine, theirs = load_file(out / "adapter_model.safetensors"), load_file(tmp_path / "resaved" / "adapter_model.safetensors")
    assert set(mine) == set(theirs) and len(mine) == 5 * 7 * 2 + 2
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(mine[name], tensor, err_msg=name)


def test_tied_embeddings_and_a_few_targets_export_as_peft_applies_them(tmp_path):
    """Beyond the run's untied, all-targets shape: tied embeddings (PEFT ties the output row to the input's),
    three targets, a fractional alpha; random adapters on a random base, merged by us, worn by peft."""
    cfg = ModelConfig(vocab_size=98, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=96, max_len=64, tie_embeddings=True)
    random_hf_model(cfg.replace(vocab_size=97)).save_pretrained(tmp_path / "base")
    found, names, get = hf.read(tmp_path / "base")
    base = params_from_hf(names, get, found, source="base")
    base["embed"] = np.concatenate([base["embed"], np.zeros((1, cfg.dim), np.float32)])  # the added token's row
    spec = LoraSpec(rank=3, alpha=6.5, dropout=0.1, targets=("q", "o", "down"), base_dtype="", rows=(97, 98))
    rng = np.random.default_rng(0)
    trained = {"layers": {name: {k: rng.normal(0, 0.2, s.shape).astype(np.float32) for k, s in ab.items()}
                          for name, ab in adapters.abstract(cfg, spec)["layers"].items()},
               "rows": {"embed": rng.normal(0, 1, (1, cfg.dim)).astype(np.float32)}}
    tokens = rng.integers(0, 98, (2, 9))
    tokens[:, 4] = 97
    ours = np.asarray(model_from_params(cfg, adapters.merge(trained, base, spec))(tokens))

    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file(peft_format.adapter_tensors(trained, spec, cfg), str(folder / peft_format.ADAPTER_WEIGHTS))
    (folder / peft_format.ADAPTER_CONFIG).write_text(json.dumps(peft_format.adapter_config(spec, cfg)))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), attn_implementation="eager")
    model.resize_token_embeddings(98)
    model = peft.PeftModel.from_pretrained(model, str(folder)).eval()
    assert sorted(model.peft_config["default"].target_modules) == ["down_proj", "o_proj", "q_proj"]
    np.testing.assert_allclose(hf_logits(model, tokens), ours, atol=1e-4)


def test_the_merged_hf_export_gives_our_logits_and_stops_at_eot(lora_run, ours, tmp_path):
    out = convert(lora_run, tmp_path / "hf", output_format="hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager").eval()
    assert model.config.vocab_size == USED and model.generation_config.eos_token_id == [2, EOT]
    np.testing.assert_allclose(hf_logits(model, TOKENS), ours[2], atol=1e-4)
    answers = _greedy(lora_run, model, transformers.AutoTokenizer.from_pretrained(str(out)))
    assert any(answer[-1] == EOT for answer in answers)  # transformers stopped where ours did, at EOT


def test_the_merged_gguf_export_holds_the_merged_weights_and_the_eot(lora_run, ours, tmp_path):
    out = convert(lora_run, tmp_path / "m.gguf", output_format="gguf")
    meta = {f.name: f.contents() for f in gguf.GGUFReader(out).fields.values()}
    assert (meta["tokenizer.ggml.eot_token_id"], meta["tokenizer.ggml.tokens"][EOT], meta["llama.vocab_size"]) == (EOT, "<|lima_eot|>", USED)
    cfg, params = ours[:2]
    found, names, get = gguf_format.read(out)
    back = params_from_hf(names, get, found, source=str(out))
    np.testing.assert_array_equal(back["layers"]["wq"], np.asarray(params["layers"]["wq"]))  # merged, not the base's
    np.testing.assert_array_equal(back["embed"], np.asarray(params["embed"])[:USED])


def test_the_merged_gguf_export_stops_at_eot_in_transformers(lora_run, tmp_path):
    """transformers' GGUF loader builds `eos_token_id` from `tokenizer.ggml.eos_token_id` alone (it ignores
    `eot_token_id`): a chat fine-tune's file names its EOT there, so greedy `generate` stops where ours does.
    The prompts are ours: transformers' GGUF sentencepiece tokenizer adds no prefix space after `<s>` in a
    rendered template (llama.cpp's does, as sentencepiece does), which is no part of what the file says."""
    pytest.importorskip("accelerate", reason="transformers loads GGUF files through accelerate")
    out = convert(lora_run, tmp_path / "m.gguf", output_format="gguf")
    model = transformers.AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
    generator = Generator(lora_run)
    prompts = [generator.encode(turns) for turns in CONVERSATIONS]
    mine = generator(prompts, SamplingParams(temperature=0.0, max_new_tokens=12), seed=0)
    assert any(answer[-1] == EOT and len(answer) < 12 for answer in mine)  # ours ends a turn within 12 tokens
    for prompt, answer in zip(prompts, mine):
        with torch.no_grad():
            theirs = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12)[0, len(prompt):].tolist()
        assert theirs == answer  # the same tokens, and no further past EOT
    tokenizer = transformers.AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    assert (tokenizer.eos_token, tokenizer.eos_token_id, tokenizer.bos_token_id) == ("<|lima_eot|>", EOT, 1)


def test_a_full_model_is_refused_for_peft_in_one_line(pretrained, tmp_path):
    """A converted checkpoint here; a full run's step is refused by the same check (`checkpoint.is_adapter`)."""
    with pytest.raises(LimaError, match=r"not a LoRA run or step \(it holds a full model\)"):
        convert(pretrained.parent / "hf", tmp_path / "adapter", output_format="peft")  # nor a Hugging Face folder
    r = call_command("convert", f"--input={pretrained}", f"--output={tmp_path}/adapter", "--output_format=peft")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"error: --input {pretrained}: not a LoRA run or step (it holds a full model); --output_format=peft exports "
        "a LoRA run's adapters: pass --output_format=hf or gguf")
    assert not (tmp_path / "adapter").exists()
