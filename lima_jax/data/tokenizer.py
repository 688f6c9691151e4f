"""LIMA's chat format on top of any tokenizer `text_tokenizers.load` reads.

A conversation is BOS, then every utterance followed by an end-of-turn token (EOT). By default LIMA
adds EOT as a new token rather than reusing EOS, so that the pretrained meaning of EOS is left alone;
its id is the first one past the tokenizer's, and the model's vocabulary grows by one. `eot=TOKEN`
reuses one of the tokenizer's own special tokens instead (Llama 3's `<|eot_id|>`, ChatML's
`<|im_end|>`), and the vocabulary stays as it is.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from lima_jax.data import text_tokenizers
from lima_jax.errors import LimaError
from lima_jax.storage.paths import Path, PathLike

TRAIN_ON = ("assistant", "all")
NEW_EOT = "<|lima_eot|>"  # how the new token is shown to a person; it is never read from text


class ChatTokenizer:
    """Encodes conversations for training (ids + loss mask) and prompts for sampling."""

    def __init__(self, path: str | os.PathLike, eot: str | int = "") -> None:
        """`eot`: empty for LIMA's new token; else one of the tokenizer's tokens, by text or by id."""
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

    def encode_text(self, text: str) -> list[int]:
        """Ids of plain text, no special tokens added."""
        return self.text.encode(text)

    def token(self, i: int) -> str:
        """How id `i` reads in the vocabulary (the new EOT as NEW_EOT)."""
        return NEW_EOT if self.new_eot and i == self.eot_id else self.text.token(i)

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

    def encode_prompt(self, turns: Sequence[str]) -> list[int]:
        """BOS + every turn + EOT: the context from which the model writes the next assistant turn."""
        if len(turns) % 2 != 1:
            raise LimaError(f"a prompt must end with a user turn (an odd number of turns), got {len(turns)} turns")
        ids = self._start()
        for text in turns:
            ids += self.text.encode(text) + [self.eot_id]
        return ids

    def encode_plain(self, text: str) -> list[int]:
        """BOS + text: a base model's prompt, with no chat format."""
        return self._start() + self.text.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` up to the first EOT or EOS; BOS and ids outside the tokenizer are dropped."""
        out: list[int] = []
        for i in (int(x) for x in ids):
            if i in (self.eot_id, self.eos_id):
                break
            if i != self.bos_id and 0 <= i < self.num_pieces:
                out.append(i)
        return self.text.decode(out)
