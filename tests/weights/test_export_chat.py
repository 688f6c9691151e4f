"""A fine-tuned model exported to Hugging Face chats and stops as ours does: its EOT is a special token
of the exported tokenizer at the id it was trained as, `apply_chat_template` gives the ids our sampler
feeds the model, and transformers' greedy `generate` gives our greedy tokens and stops at EOT; for a
sentencepiece tokenizer with LIMA's new EOT and for a Llama-3-style tokenizer.json reusing <|eot_id|>
(the end-to-end test: `llama3_8b` shrunk to tiny)."""
import json

import jax
import numpy as np
import pytest
from flax import nnx
from support.paths import LLAMA_TOKENIZER, require
from support.hf_reference import torch, transformers
from support.tokenizers import LLAMA3, hf_folder

from lima_jax.config import load_config
from lima_jax.data import demo_dir, text_tokenizers
from lima_jax.data.tokenizer import NEW_EOT, ChatTokenizer
from lima_jax.errors import LimaError
from lima_jax.inference.generator import Generator
from lima_jax.inference.sampler import SamplingParams
from lima_jax.model import Llama, ModelConfig
from lima_jax.weights import hf
from lima_jax.weights.convert import convert

EPOCHS, BATCH = 1, 8  # 8 steps, one checkpoint: few, and enough for the answers to end at EOT
CONVERSATIONS = [["What is 3 plus 2?"], ["What is 7 plus 4?", "11.", "And what is 2 plus 2?"]]
# For the tokenizers alone: newlines, lists, non-ASCII text and emoji, a multi-turn history.
MIXED = CONVERSATIONS + [["How do I boil an egg?\n\nBe brief, please: 3 steps.", "Boil water.\n1. Put the egg in.\n2. Wait 8 minutes.",
                          "Grüße! 🦙 Why 8?"]]
SHRUNK = {"model.dim": 64, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2, "model.ffn_dim": 128,
          "model.max_len": 128, "model.dtype": "float32", "model.residual_dropout": 0.0}


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """A Llama-3-style HF tokenizer folder: byte-level BPE, <|begin_of_text|> added by its post-processor."""
    return hf_folder(tmp_path_factory.mktemp("llama3_tok"), None, clean_up_tokenization_spaces=False)


def _messages(turns):
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def _templated_messages(ref, messages):
    ids = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _templated(ref, turns):
    return _templated_messages(ref, _messages(turns))


def _random_params(cfg):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(0)))))


def _export(folder, tokenizer, eot_id, used_vocab):
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    cfg = ModelConfig(vocab_size=used_vocab, dim=32, num_layers=1, num_heads=2, num_kv_heads=1, ffn_dim=32, max_len=64,
                      bos_id=bos, eos_id=eos)
    return hf.write(folder, _random_params(cfg), cfg, tokenizer=tokenizer, eot_id=eot_id)


@pytest.mark.parametrize("which", ["demo", "llama"])
def test_sentencepiece_export_adds_the_new_eot_and_templates_the_ids_our_sampler_feeds(tmp_path, which):
    path = demo_dir() / "tokenizer.model" if which == "demo" else require(LLAMA_TOKENIZER)
    tok = ChatTokenizer(path)  # LIMA's new EOT: the first id past its pieces (512; LLaMA's 32000)
    out = _export(tmp_path / "hf", tok, tok.eot_id, tok.vocab_size)
    ref = transformers.AutoTokenizer.from_pretrained(str(out))
    assert len(ref) == tok.vocab_size and ref.convert_tokens_to_ids(NEW_EOT) == tok.eot_id == tok.num_pieces
    assert ref.added_tokens_decoder[tok.eot_id].special
    for turns in MIXED:
        assert _templated(ref, turns) == tok.encode_prompt(turns)
    ids = tok.encode_prompt(CONVERSATIONS[1])
    assert ref.decode(ids, skip_special_tokens=True).replace(" ", "") == "".join(CONVERSATIONS[1]).replace(" ", "")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tok.eos_id, tok.eot_id]
    system = [{"role": "system", "content": "Be brief."}]  # before the first turn, as our server puts it
    assert _templated_messages(ref, system + _messages(["What is 3 plus 2?"])) == tok.encode_prompt(["Be brief.\n\nWhat is 3 plus 2?"])
    with pytest.raises(Exception, match="LIMA's chat format has no tool messages"):
        ref.apply_chat_template([{"role": "tool", "content": "5"}], tokenize=False)


def test_tokenizer_json_export_keeps_a_reused_eot_and_every_id(bpe_folder, tmp_path):
    tok = ChatTokenizer(bpe_folder, eot="<|eot_id|>")
    out = _export(tmp_path / "hf", tok, tok.eot_id, tok.vocab_size)
    original = json.loads((bpe_folder / "tokenizer.json").read_text())
    assert json.loads((out / "tokenizer.json").read_text()) == original  # nothing added, nothing moved
    ref = transformers.AutoTokenizer.from_pretrained(str(out))
    assert ref.convert_tokens_to_ids("<|eot_id|>") == tok.eot_id and len(ref) == tok.num_pieces
    for turns in MIXED:
        assert _templated(ref, turns) == tok.encode_prompt(turns)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [tok.eos_id, tok.eot_id]


def test_tokenizer_json_export_adds_the_new_eot_at_its_trained_id_without_moving_any(bpe_folder, tmp_path):
    tok = ChatTokenizer(bpe_folder)
    out = _export(tmp_path / "hf", tok, tok.eot_id, tok.vocab_size)
    before = text_tokenizers.load(bpe_folder).tok.get_vocab(with_added_tokens=True)
    after = text_tokenizers.load(out).tok.get_vocab(with_added_tokens=True)
    assert after == {**before, NEW_EOT: tok.num_pieces}
    ref = transformers.AutoTokenizer.from_pretrained(str(out))
    for turns in MIXED:
        assert _templated(ref, turns) == tok.encode_prompt(turns)

    gap = tmp_path / "gap"  # ids with a hole: tokenizers would add the token in it, not at the trained id
    gap.mkdir()
    spec = json.loads((bpe_folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab[max(vocab, key=vocab.get)] = 450
    (gap / "tokenizer.json").write_text(json.dumps(spec))
    (gap / "tokenizer_config.json").write_text((bpe_folder / "tokenizer_config.json").read_text())
    holed = ChatTokenizer(gap)
    with pytest.raises(LimaError, match=rf"adding '<\|lima_eot\|>' gave id \d+, not the id {holed.eot_id} the model was trained with"):
        _export(tmp_path / "hf2", holed, holed.eot_id, holed.vocab_size)


def test_a_run_trained_on_the_tokenizers_own_template_keeps_it(tmp_path):
    tok = ChatTokenizer(hf_folder(tmp_path / "tok", LLAMA3), eot="<|eot_id|>", chat_format="template")
    out = _export(tmp_path / "hf", tok, tok.eot_id, tok.vocab_size)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == LLAMA3
    ref = transformers.AutoTokenizer.from_pretrained(str(out))
    for turns in MIXED:
        assert _templated(ref, turns) == tok.encode_prompt(turns)


def _train(tmp_path, config_name, tokenizer, eot, **model):
    """A few steps on short arithmetic answers: enough for the model to answer and then emit EOT."""
    from lima_jax.train.loop import train

    data = tmp_path / "data"
    data.mkdir()
    pairs = [(a, b) for a in range(1, 17) for b in range(1, 5)]
    (data / "train.jsonl").write_text("".join(
        json.dumps({"conversations": [f"What is {a} plus {b}?", f"{a + b}."]}) + "\n" for a, b in pairs))
    config = load_config(config_name, {
        **SHRUNK, **model, "workdir": str(tmp_path / "run"), "num_epochs": EPOCHS, "batch_size": BATCH, "data.max_len": 64,
        "data.dev_size": 0, "checkpoint.async_save": False, "data.manual_dir": str(data),
        "data.tokenizer": str(tokenizer), "data.eot": eot, "optim.lr": 3e-3, "optim.end_lr": 3e-4})
    train(config)
    return config.workdir


def _assert_same_greedy_tokens_and_stop_at_eot(workdir, out):
    ours = Generator(workdir)  # what `python -m lima_jax.sample --temperature=0` runs
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager").eval()
    ref = transformers.AutoTokenizer.from_pretrained(str(out))
    prompts = [_templated(ref, turns) for turns in CONVERSATIONS]
    assert prompts == [ours.encode(turns) for turns in CONVERSATIONS]
    mine = ours(prompts, SamplingParams(temperature=0.0, max_new_tokens=16), seed=0)
    for prompt, answer in zip(prompts, mine):
        with torch.no_grad():
            theirs = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16)[0, len(prompt):].tolist()
        assert theirs == answer
        assert answer[-1] == ours.eot_id and 1 < len(answer) < 16  # it answered, then stopped at EOT, both of them
        assert ref.decode(theirs, skip_special_tokens=True).strip() == ours.decode(answer).strip()


def test_a_model_fine_tuned_with_a_new_eot_generates_our_greedy_tokens_in_transformers(tmp_path):
    workdir = _train(tmp_path, "tiny", demo_dir() / "tokenizer.model", "")
    out = convert(workdir, tmp_path / "hf", output_format="hf")
    _assert_same_greedy_tokens_and_stop_at_eot(workdir, out)


def test_llama3_end_to_end_train_export_and_reload_in_transformers(bpe_folder, tmp_path):
    """`llama3_8b`'s architecture (GQA, rope theta 500,000, untied) shrunk to tiny, a Llama-3-style
    tokenizer reusing <|eot_id|>, trained, exported, and reloaded in transformers."""
    tok = ChatTokenizer(bpe_folder, eot="<|eot_id|>")
    workdir = _train(tmp_path, "llama3_8b", bpe_folder, "<|eot_id|>", **{"model.bos_id": tok.bos_id, "model.eos_id": tok.eos_id})
    out = convert(workdir, tmp_path / "hf", output_format="hf")  # python -m lima_jax.convert --output_format=hf
    config = json.loads((out / "config.json").read_text())
    assert (config["rope_theta"], config["num_key_value_heads"], config["vocab_size"]) == (500000.0, 2, tok.num_pieces)
    _assert_same_greedy_tokens_and_stop_at_eot(workdir, out)
