"""The tokenizer side of a Hugging Face export: what makes the exported model chat and stop as ours does.

A fine-tuned model is exported with its end-of-turn token (EOT) in the tokenizer (LIMA's new token at
the id the run gave it, never over an existing id; a reused token as it is), a `chat_template` that
renders LIMA's format so that `apply_chat_template(messages, add_generation_prompt=True)` gives the ids
our sampler feeds the model, and a `generation_config.json` that stops at EOS or EOT with LIMA's nucleus
sampling. LIMA's repetition penalty is left out: transformers' penalizes the prompt's tokens too, ours
only the generated ones. A base model (no EOT) gets its tokenizer as it is and a generation config with
its EOS."""
from __future__ import annotations

import json

from lima_jax.data import text_tokenizers
from lima_jax.data.tokenizer import NEW_EOT, ChatTokenizer
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig
from lima_jax.storage.paths import Path, copy_file

GENERATION_CONFIG = "generation_config.json"


def lima_chat_template(bos: str | None, eot: str) -> str:
    """Jinja for LIMA's format: BOS, then every message's text followed by EOT. LIMA has no system role:
    system messages go before the first user message, each followed by a blank line, as the server
    puts them (`serve.protocol`)."""
    start = "" if bos is None else "{{ " + json.dumps(bos) + " }}"
    return (
        "{%- set ns = namespace(system='') -%}" + start + "{%- for message in messages -%}"
        "{%- if message['role'] in ['system', 'developer'] -%}{%- set ns.system = ns.system + message['content'] + '\\n\\n' -%}"
        "{%- elif message['role'] in ['user', 'assistant'] -%}"
        "{{ ns.system + message['content'] + " + json.dumps(eot) + " }}{%- set ns.system = '' -%}"
        "{%- else -%}{{ raise_exception('LIMA\\'s chat format has no ' + message['role'] + ' messages') }}"
        "{%- endif -%}{%- endfor -%}"
    )


def write_tokenizer(folder: Path, tokenizer: ChatTokenizer, eot_id: int | None, cfg: ModelConfig) -> None:
    """The tokenizer files transformers loads, with the run's EOT and chat template (see the module doc)."""
    if eot_id is not None and eot_id != tokenizer.eot_id:
        raise LimaError(f"tokenizer {tokenizer.path}: the run's end-of-turn id {eot_id} is not the tokenizer's "
                        f"{tokenizer.eot_id}")
    if eot_id is not None and eot_id >= cfg.used_vocab_size:
        raise LimaError(f"tokenizer {tokenizer.path}: end-of-turn id {eot_id} is past the model's "
                        f"{cfg.used_vocab_size} embedding rows")
    adds_eot = eot_id is not None and tokenizer.new_eot
    files = text_tokenizers.files_of(tokenizer.path)
    kind = tokenizer.text.kind
    if kind == "hf":
        settings = json.loads(files[text_tokenizers.HF_CONFIG].read_text()) if text_tokenizers.HF_CONFIG in files else {}
        for name, src in files.items():
            if name not in (text_tokenizers.HF_FILE, text_tokenizers.HF_CONFIG) and not (
                    eot_id is not None and tokenizer.chat_format == "lima" and name == "chat_template.jinja"):
                copy_file(src, folder / name)  # a LIMA-format run's template replaces the tokenizer's own
        tokenizer_json = files[text_tokenizers.HF_FILE].read_text()
        (folder / text_tokenizers.HF_FILE).write_text(
            _with_new_token(tokenizer_json, tokenizer) if adds_eot else tokenizer_json)
    elif kind == "sentencepiece":
        copy_file(files[text_tokenizers.MODEL_FILE], folder / text_tokenizers.MODEL_FILE)
        settings = {
            "tokenizer_class": "LlamaTokenizer", "bos_token": tokenizer.text.token(tokenizer.bos_id),
            "eos_token": tokenizer.text.token(tokenizer.eos_id), "unk_token": "<unk>", "add_bos_token": True,
            "add_eos_token": False,
            "legacy": True,  # the text after a special token starts a new word, as sentencepiece.encode(turn) does
        }
    else:
        raise LimaError(f"tokenizer {tokenizer.path}: a {kind} tokenizer.model cannot be exported for transformers; "
                        "pass --tokenizer=FOLDER holding the model's tokenizer.json")
    settings["model_max_length"] = cfg.max_len
    if adds_eot:
        decoder = settings.setdefault("added_tokens_decoder", {})
        decoder[str(eot_id)] = {"content": NEW_EOT, "special": True, "lstrip": False, "rstrip": False,
                                "normalized": False, "single_word": False}
    if eot_id is not None and tokenizer.chat_format == "lima":
        bos = None if tokenizer.bos_id is None else tokenizer.text.token(tokenizer.bos_id)
        settings["chat_template"] = lima_chat_template(bos, tokenizer.token(eot_id))
    (folder / text_tokenizers.HF_CONFIG).write_text(json.dumps(settings, indent=2, ensure_ascii=False))


def _with_new_token(tokenizer_json: str, tokenizer: ChatTokenizer) -> str:
    """tokenizer.json with LIMA's new EOT added as a special token, at the id the run trained it as."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    if tok.token_to_id(NEW_EOT) is not None:
        raise LimaError(f"tokenizer {tokenizer.path}: it already has a token {NEW_EOT!r}, the text of LIMA's new end-of-turn token")
    tok.add_special_tokens([AddedToken(NEW_EOT, special=True, normalized=False)])
    if tok.token_to_id(NEW_EOT) != tokenizer.eot_id:  # ids with gaps would put it elsewhere than the model learned it
        raise LimaError(f"tokenizer {tokenizer.path}: adding {NEW_EOT!r} gave id {tok.token_to_id(NEW_EOT)}, "
                        f"not the id {tokenizer.eot_id} the model was trained with")
    return tok.to_str(pretty=True)


def generation_config(cfg: ModelConfig, eot_id: int | None) -> dict:
    """generation_config.json: stop at EOS and EOT; LIMA's nucleus sampling."""
    stops = [cfg.eos_id] + ([eot_id] if eot_id is not None and eot_id != cfg.eos_id else [])
    return {"bos_token_id": cfg.bos_id, "eos_token_id": stops if len(stops) > 1 else stops[0],
            "pad_token_id": cfg.eos_id, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
