"""`data.chat_format=template`: conversations rendered with the tokenizer's own Jinja chat template give
the ids transformers' `apply_chat_template` gives, the loss mask found without any markup in the template
is the one transformers computes from `{% generation %}` tags, and a template that would train on nothing,
on everything or without its stop token fails loudly."""
import json
import subprocess
import sys

import numpy as np
import pytest

from lima_jax.data import chat_template
from lima_jax.data.tokenizer import ChatTokenizer
from lima_jax.errors import LimaError

transformers = pytest.importorskip("transformers")
from support.tokenizers import LLAMA3, hf_folder  # noqa: E402
from support.training import two_step_config  # noqa: E402

# The two families in use, each with the assistant's trained part tagged for transformers' reference mask.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen-style: a default system prompt when none is given, whitespace control, the generation prompt last.
CHATML_SYSTEM = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif %}\n" + CHATML.replace("{% for", "{%- for").replace("{% endfor %}", "{%- endfor %}\n")
)
TURNS = ["How do I boil an egg?\nBe brief.", "Put it in boiling water for 8 minutes. 🥚",
         "And then?", "  Cool it in cold water.  "]


def messages(turns):
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


@pytest.mark.parametrize("template, eot", [(CHATML, "<|im_end|>"), (CHATML_SYSTEM, "<|im_end|>"), (LLAMA3, "<|eot_id|>")])
def test_ids_and_mask_are_transformers_apply_chat_template_and_its_assistant_mask(tmp_path, template, eot):
    folder = hf_folder(tmp_path / "tok", template)
    ref = transformers.AutoTokenizer.from_pretrained(str(folder))
    tok = ChatTokenizer(folder, eot=eot, chat_format="template")
    for turns in (TURNS[:2], TURNS):
        expected = ref.apply_chat_template(messages(turns), tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
        ids, mask = tok.encode_conversation(turns, max_len=1024)
        assert ids.tolist() == list(expected["input_ids"])
        assert mask.tolist() == list(expected["assistant_masks"]) and 0 < mask.sum() < len(mask)
        assert ids[mask == 1].tolist().count(tok.eot_id) == len(turns) // 2  # each answer trains its stop token
        # Sampling feeds exactly what transformers' generation prompt gives, a prefix of the training ids.
        prompt = tok.encode_prompt(turns[:-1])
        assert prompt == list(ref.apply_chat_template(messages(turns[:-1]), tokenize=True, add_generation_prompt=True,
                                                      return_dict=True)["input_ids"])
        assert ids.tolist()[: len(prompt)] == prompt and mask[len(prompt) - 1] == 0 and mask[len(prompt)] == 1
    ids, mask = tok.encode_conversation(TURNS, max_len=20)
    assert len(ids) == len(mask) == 20


def test_a_template_that_is_not_prefix_stable_still_finds_the_answers(tmp_path):
    """A template that writes the turn count up front (so a shorter conversation is not a prefix)."""
    template = "count={{ messages | length }}\n" + CHATML
    tok = ChatTokenizer(hf_folder(tmp_path, template), eot="<|im_end|>", chat_format="template")
    ids, mask = tok.encode_conversation(TURNS, max_len=1024)
    runs = tok.show(ids, mask).split("[[")[1:]
    assert [r.split("]]")[0] for r in runs] == [TURNS[1] + "<|im_end|>", TURNS[3] + "<|im_end|>"]


@pytest.mark.parametrize("template, eot, message", [
    ("{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}",
     "<|im_end|>", r"assistant turn 1's text does not appear in the rendered conversation"),
    ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", "<|im_end|>",
     r"an assistant turn is not closed by the end-of-turn token '<\|im_end\|>' \(config key data.eot\)"),
    (CHATML, "<|eot_id|>", r"not closed by the end-of-turn token '<\|eot_id\|>'"),
    ("{% for m in messages %}{{ raise_exception('only system prompts') }}{% endfor %}", "<|im_end|>",
     r"rendering a 4-turn conversation failed \(only system prompts\)"),
    ("{% for m in messages %}", "<|im_end|>", "it does not compile"),
])
def test_templates_that_cannot_be_trained_on_stop_before_any_data_is_read(tmp_path, template, eot, message):
    with pytest.raises(LimaError, match=rf"^chat template of {tmp_path}: .*{message}"):
        ChatTokenizer(hf_folder(tmp_path, template), eot=eot, chat_format="template")


def test_an_all_zero_or_all_one_mask_fails_loudly():
    with pytest.raises(LimaError, match="all-zero loss mask"):
        chat_template.check_example([1, 2, 3], [0, 0, 0], 3, "tok", str)
    with pytest.raises(LimaError, match="all-one loss mask"):
        chat_template.check_example([1, 2, 3], [1, 1, 1], 3, "tok", str)
    chat_template.check_example([1, 2, 3], [0, 1, 1], 3, "tok", str)


def test_template_mode_needs_a_template_and_a_reused_eot(tmp_path):
    with pytest.raises(LimaError, match=r"config key data.eot: chat_format=template needs the token"):
        ChatTokenizer(hf_folder(tmp_path / "a", CHATML), chat_format="template")
    with pytest.raises(LimaError, match=r"config key data.chat_format: the tokenizer .* has no chat template"):
        ChatTokenizer(hf_folder(tmp_path / "b", None), eot="<|im_end|>", chat_format="template")
    with pytest.raises(LimaError, match=r"config key data.chat_format: must be one of lima, template, got 'chatml'"):
        ChatTokenizer(hf_folder(tmp_path / "c", CHATML), eot="<|im_end|>", chat_format="chatml")


def test_a_short_run_trains_and_samples_with_the_template(tmp_path):
    from lima_jax.inference.generator import Generator
    from lima_jax.train.loop import train

    folder = hf_folder(tmp_path / "tok", CHATML)
    ref = transformers.AutoTokenizer.from_pretrained(str(folder))
    config = two_step_config(tmp_path, **{"data.tokenizer": str(folder), "data.eot": "<|im_end|>", "data.chat_format": "template"})
    train(config)
    losses = [json.loads(line).get("loss") for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert np.isfinite([x for x in losses if x is not None]).all()
    generator = Generator(config.workdir)
    assert generator.tokenizer.chat_format == "template" and generator.eot_id == ref.convert_tokens_to_ids("<|im_end|>")
    assert generator.encode(["Hi there"]) == list(ref.apply_chat_template(
        messages(["Hi there"]), tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])


def test_inspect_prints_the_example_with_its_trained_spans_marked(tmp_path):
    folder = hf_folder(tmp_path / "tok", CHATML)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"conversations": TURNS}) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "lima_jax.data.inspect", "--config=tiny", f"--config.data.tokenizer={folder}",
         "--config.data.eot=<|im_end|>", "--config.data.chat_format=template", f"--file={data}"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tok = ChatTokenizer(folder, eot="<|im_end|>", chat_format="template")
    ids, mask = tok.encode_conversation(TURNS, max_len=1024)
    lines = out.stdout.splitlines()
    assert "chat format template" in lines[0] and "'<|im_end|>' (id" in lines[0]
    assert "\n".join(lines[1:-1]) == (
        f"<|im_start|>user\n{TURNS[0]}<|im_end|>\n<|im_start|>assistant\n[[{TURNS[1]}<|im_end|>]]\n"
        f"<|im_start|>user\n{TURNS[2]}<|im_end|>\n<|im_start|>assistant\n[[{TURNS[3]}<|im_end|>]]\n")
    assert lines[-1] == f"tokens: {len(ids)}; trained: {mask.sum()} ({mask.mean():.0%})"

    # LIMA's format on the demo: BOS, the new EOT written as such.
    out = subprocess.run([sys.executable, "-m", "lima_jax.data.inspect", "--config=tiny", "--index=1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == (
        "<s>What is the capital of France?<|lima_eot|>[[The capital of France is Paris.<|lima_eot|>]]")
