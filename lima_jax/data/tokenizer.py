"""LIMA's chat format on top of any tokenizer `text_tokenizers.load` reads.

A conversation is BOS, then every utterance followed by an end-of-turn token (EOT). By default LIMA
adds EOT as a new token rather than reusing EOS, so that the pretrained meaning of EOS is left alone;
its id is the first one past the tokenizer's, and the model's vocabulary grows by one. `eot=TOKEN`
reuses one of the tokenizer's own special tokens instead (Llama 3's `<|eot_id|>`, ChatML's
`<|im_end|>`), and the vocabulary stays as it is.

`chat_format="template"` renders conversations with the tokenizer's own Jinja chat template instead
(`chat_template.py`): the template then writes BOS and the turns' markup, and `eot` must name the token
it closes assistant turns with.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from lima_jax.data import chat_template, text_tokenizers
from lima_jax.errors import LimaError
from lima_jax.storage.paths import PathLike

TRAIN_ON = ("assistant", "all")
CHAT_FORMATS = ("lima", "template")
_PROBE = ["Hello! Who are you?", "I am a helpful assistant.", "What is 3 plus 4?", "3 plus 4 is 7."]
NEW_EOT = "<|lima_eot|>"  # how the new token is shown to a person; it is never read from text


class ChatTokenizer:
    """Encodes conversations for training (ids + loss mask) and prompts for sampling."""

    def __init__(self, path: str | os.PathLike, eot: str | int = "", chat_format: str = "lima") -> None:
        """`eot`: empty for LIMA's new token; else one of the tokenizer's tokens, by text or by id.
        `chat_format`: "lima" (BOS, each turn then EOT) or "template" (the tokenizer's chat template)."""
        self.path = os.fspath(path)
        self.text: text_tokenizers.TextTokenizer = text_tokenizers.load(path)
        self.bos_id: int | None = self.text.bos_id
        self.eos_id: int | None = self.text.eos_id
        self.pad_id: int = 0  # padding is masked out by segment ids and weights, so any id will do
        self.num_pieces: int = self.text.num_ids  # the tokenizer's ids, its special tokens included
        self.new_eot: bool = eot == ""
        if self.new_eot:
            self.eot_id: int = self.num_pieces  # LIMA's new token: the first id past the tokenizer's
        elif isinstance(eot, int):
            if not 0 <= eot < self.num_pieces:
                raise LimaError(f"tokenizer {self.path}: end-of-turn id {eot} is not one of its {self.num_pieces} ids")
            self.eot_id = eot
        else:
            found = self.text.token_id(eot)
            if found is None:
                raise LimaError(f"config key data.eot: {eot!r} is not a token of the tokenizer {self.path}")
            self.eot_id = found
        self.vocab_size: int = self.num_pieces + int(self.new_eot)  # the ids the model reads and emits
        if chat_format not in CHAT_FORMATS:
            raise LimaError(f"config key data.chat_format: must be one of {', '.join(CHAT_FORMATS)}, got {chat_format!r}")
        self.chat_format = chat_format
        self.template: chat_template.ChatTemplate | None = None
        if chat_format == "template":
            self._use_template()

    def _use_template(self) -> None:
        """Reads the tokenizer's chat template and tries it on a probe conversation: a template that
        cannot be trained on fails here, before any data is read."""
        source = self.text.chat_template
        if not source or not hasattr(self.text, "encode_with_offsets"):
            raise LimaError(f"config key data.chat_format: the tokenizer {self.path} has no chat template "
                            "(it comes with an HF tokenizer_config.json or chat_template.jinja)")
        if self.new_eot:
            raise LimaError("config key data.eot: chat_format=template needs the token the template closes assistant "
                            "turns with (e.g. <|im_end|>, <|eot_id|>)")
        self.template = chat_template.ChatTemplate(source, self.text.template_variables, self.text.token(self.eot_id),
                                                   where=self.path)
        self.encode_conversation(_PROBE, max_len=1 << 30)

    def encode_text(self, text: str) -> list[int]:
        """Ids of plain text, no special tokens added."""
        return self.text.encode(text)

    def token(self, i: int) -> str:
        """How id `i` reads in the vocabulary (the new EOT as NEW_EOT)."""
        return NEW_EOT if self.new_eot and i == self.eot_id else self.text.token(i)

    def token_text(self, i: int) -> str:
        """The text id `i` adds inside running text (empty for the new EOT, which stands for no text)."""
        return "" if self.new_eot and i == self.eot_id else self.text.token_text(i)

    def save(self, folder: PathLike) -> None:
        """Copies the tokenizer's files into `folder` (a checkpoint or a run's workdir)."""
        text_tokenizers.copy_files(self.path, folder)

    def _start(self) -> list[int]:
        return [] if self.bos_id is None else [self.bos_id]

    def encode_conversation(self, turns: Sequence[str], *, max_len: int, train_on: str = "assistant") -> tuple[np.ndarray, np.ndarray]:
        """Token ids and a 0/1 loss mask (int32), both trimmed to `max_len`.

        `loss_mask[i] == 1` when token i is a training target, i.e. is predicted from the tokens
        before it: with train_on="assistant" every assistant utterance (odd turn index) and its
        EOT; with "all" every token but the first.
        """
        if train_on not in TRAIN_ON:
            raise LimaError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
        if max_len < 1:
            raise LimaError(f"max_len must be positive, got {max_len}")
        if self.template is not None:
            return self._encode_templated(turns, max_len, train_on)
        ids = self._start()
        mask = [0] * len(ids)
        for i, text in enumerate(turns):
            if len(ids) >= max_len:
                break  # the rest would be trimmed: don't spend time encoding it
            pieces = self.text.encode(text) + [self.eot_id]
            ids += pieces
            mask += [int(train_on == "all" or i % 2 == 1)] * len(pieces)
        if mask and self.bos_id is None:
            mask[0] = 0  # nothing predicts the first token
        return np.asarray(ids[:max_len], np.int32), np.asarray(mask[:max_len], np.int32)

    def _encode_templated(self, turns: Sequence[str], max_len: int, train_on: str) -> tuple[np.ndarray, np.ndarray]:
        text, spans = self.template.render_spans(turns)
        ids, offsets = self.text.encode_with_offsets(text)
        if train_on == "all":
            mask = [0] + [1] * (len(ids) - 1)
        else:
            mask = chat_template.loss_mask(offsets, spans)
            if len(turns) >= 2:  # a prompt alone trains nothing, by design
                chat_template.check_example(ids, mask, self.eot_id, self.path, self.token)
        return np.asarray(ids[:max_len], np.int32), np.asarray(mask[:max_len], np.int32)

    def encode_prompt(self, turns: Sequence[str]) -> list[int]:
        """BOS + every turn + EOT: the context from which the model writes the next assistant turn
        (with a chat template: the conversation rendered with its generation prompt)."""
        if len(turns) % 2 != 1:
            raise LimaError(f"a prompt must end with a user turn (an odd number of turns), got {len(turns)} turns")
        if self.template is not None:
            return self.text.encode_with_offsets(self.template.render(turns, add_generation_prompt=True))[0]
        ids = self._start()
        for text in turns:
            ids += self.text.encode(text) + [self.eot_id]
        return ids

    def encode_plain(self, text: str) -> list[int]:
        """BOS + text: a base model's prompt, with no chat format."""
        return self._start() + self.text.encode(text)

    def show(self, ids: Sequence[int], mask: Sequence[int]) -> str:
        """The text of `ids` with special tokens written out and the loss-carrying runs in [[ ]]."""
        out, i = [], 0
        while i < len(ids):
            j = i
            while j < len(ids) and mask[j] == mask[i]:
                j += 1
            run = [int(x) for x in ids[i:j]]
            parts, start = [], 0
            for k, t in enumerate(run + [None]):  # the new EOT is no token of the tokenizer: write it by hand
                if t is None or (self.new_eot and t == self.eot_id):
                    parts.append(self.text.show(run[start:k]))
                    if t is not None:
                        parts.append(NEW_EOT)
                    start = k + 1
            text = "".join(parts)
            out.append(f"[[{text}]]" if mask[i] else text)
            i = j
        return "".join(out)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` up to the first EOT or EOS; BOS and ids outside the tokenizer are dropped."""
        out: list[int] = []
        for i in (int(x) for x in ids):
            if i in (self.eot_id, self.eos_id):
                break
            if i != self.bos_id and 0 <= i < self.num_pieces:
                out.append(i)
        return self.text.decode(out)


def of_model(path: PathLike, used_vocab_size: int, run: dict) -> tuple[ChatTokenizer, int | None]:
    """The tokenizer at `path` as a model used it, and the model's EOT id (None: a base model).

    `run` is what the training run recorded (`eot_id`, `chat_format`; empty for a converted
    checkpoint). Without a record, a model with one more row than the tokenizer has ids was
    fine-tuned with LIMA's new EOT (and exported without its run record); else a tokenizer whose chat
    template closes assistant turns with a special token is an instruct model's (SmolLM2-Instruct's
    ChatML and `<|im_end|>`): prompts are rendered with that template and stop at that token."""
    tokenizer = ChatTokenizer(path)
    eot = run.get("eot_id")
    chat_format = run.get("chat_format", "lima")
    if eot is None and used_vocab_size == tokenizer.vocab_size:
        eot = tokenizer.eot_id
    elif eot is None and not run and (found := template_eot(tokenizer)) is not None:
        eot, chat_format = found, "template"
    if eot is not None and (eot != tokenizer.eot_id or chat_format != "lima"):
        # the run reused one of the tokenizer's tokens, or rendered with its chat template
        tokenizer = ChatTokenizer(path, eot=eot, chat_format=chat_format)
    return tokenizer, eot


def template_eot(tokenizer: ChatTokenizer) -> int | None:
    """The special token the tokenizer's chat template writes right after an assistant's answer
    (None: no template, or none that closes turns with a special token, which stays text when decoded)."""
    text = tokenizer.text
    if not text.chat_template or not hasattr(text, "encode_with_offsets"):
        return None
    answer = _PROBE[1]
    try:
        rendered = chat_template.ChatTemplate(text.chat_template, text.template_variables, "", where=tokenizer.path
                                              ).render(_PROBE[:2])
    except LimaError:
        return None  # a template that cannot render a plain exchange is no chat format to prompt with
    at = rendered.rfind(answer)
    ids = text.encode_with_offsets(rendered[at + len(answer):].lstrip())[0] if at >= 0 else []
    return ids[0] if ids and text.decode(ids[:1]) == "" else None
