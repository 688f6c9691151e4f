"""Tokenizers the tests build: a Llama-3-style byte-level BPE trained on a few lines, and an HF folder
holding it with a chat template."""
from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

CORPUS = [
    "The capital of Canada is Ottawa.", "How do I boil an egg?\nPut it in boiling water for 8 minutes.",
    "Llamas are social animals and live in herds.", "What's 12 plus 30? It's 42.", "Grüße aus Köln! 🦙",
    "def add(a, b):\n    return a + b", "She said: \"I'll be there at 10:30.\"",
]
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<|im_start|>", "<|start_header_id|>",
           "<|end_header_id|>"]


def byte_level_bpe() -> Tokenizer:
    """A Llama-3-style tokenizer: byte-level BPE, special tokens added after the merges, BOS added by the
    post-processor (which lima_jax must not double)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    tok.add_special_tokens(SPECIAL)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    return tok


LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def hf_folder(path, template, **config):
    """`path` as an HF tokenizer folder: the byte-level BPE and its tokenizer_config.json with `template`."""
    path.mkdir(parents=True, exist_ok=True)
    byte_level_bpe().save(str(path / "tokenizer.json"))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                "eos_token": "<|end_of_text|>", "chat_template": template, **config}
    (path / "tokenizer_config.json").write_text(json.dumps(settings))
    return path
