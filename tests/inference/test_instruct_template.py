"""A converted instruct model (an HF folder whose tokenizer ships a chat template) is prompted with its
own template and stops at the token that template closes assistant turns with, as transformers'
`apply_chat_template(add_generation_prompt=True)` and its generation config would have it."""
from __future__ import annotations

import pytest
from support.hf_reference import random_hf_model, transformers
from support.tokenizers import LLAMA3, hf_folder

from lima_jax.data.tokenizer import ChatTokenizer
from lima_jax.inference.generator import Generator
from lima_jax.model import ModelConfig
from lima_jax.weights.convert import convert

# SmolLM2-Instruct's ChatML template: it adds a system turn of its own and closes every turn with <|im_end|>.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TURNS = ["How do I boil an egg?", "Put it in boiling water for 8 minutes.", "And a soft one?"]


def instruct_checkpoint(folder, template, eos_token):
    """An HF instruct model (random weights) with its tokenizer and template, converted as `convert` does."""
    hf_folder(folder, template, eos_token=eos_token)
    tok = ChatTokenizer(folder)
    cfg = ModelConfig(vocab_size=tok.num_pieces, dim=32, num_layers=1, num_heads=2, num_kv_heads=1, ffn_dim=64,
                      max_len=128, bos_id=tok.bos_id, eos_id=tok.eos_id)
    random_hf_model(cfg).save_pretrained(folder)
    return convert(folder, folder.parent / f"{folder.name}_ckpt")


@pytest.mark.parametrize("template, eos_token, closing", [
    (CHATML, "<|im_end|>", "<|im_end|>"),  # SmolLM2-Instruct: EOS is the end of turn
    (LLAMA3, "<|end_of_text|>", "<|eot_id|>"),  # a template closing turns with a token other than EOS
], ids=["chatml", "llama3"])
def test_converted_instruct_model_prompts_with_its_template_and_stops_at_its_end_of_turn(tmp_path, capsys, template,
                                                                                        eos_token, closing):
    ckpt = instruct_checkpoint(tmp_path / "instruct", template, eos_token)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "instruct")
    generator = Generator(str(ckpt))
    for turns in (TURNS[:1], TURNS):
        messages = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
        expected = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert generator.encode(turns) == list(expected)
    closing_id = reference.convert_tokens_to_ids(closing)
    assert generator.eot_id == closing_id
    assert closing_id in generator.stop_ids and reference.eos_token_id in generator.stop_ids
    assert generator.decode([*reference.encode("Boil it.", add_special_tokens=False), closing_id, 5]) == "Boil it."
    assert f"using the chat template saved with {ckpt}" in capsys.readouterr().err


def test_a_base_model_without_a_template_keeps_plain_text_prompts(tmp_path):
    ckpt = instruct_checkpoint(tmp_path / "base", None, "<|end_of_text|>")
    generator = Generator(str(ckpt))
    tok = ChatTokenizer(tmp_path / "base")
    assert generator.eot_id is None and generator.stop_ids == (tok.eos_id,)
    assert generator.encode(TURNS[:1]) == [tok.bos_id, *tok.encode_text(TURNS[0])]


def test_a_template_closing_turns_with_plain_text_is_no_end_of_turn(tmp_path):
    """No special token after the answer: nothing to stop at, so the model stays a base model."""
    ckpt = instruct_checkpoint(tmp_path / "plain", "{% for m in messages %}{{ m.content }}\n\n{% endfor %}",
                               "<|end_of_text|>")
    assert Generator(str(ckpt)).eot_id is None
