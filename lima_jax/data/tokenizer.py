"""LIMA's chat format on top of a LLaMA sentencepiece model.

A conversation is BOS, then every utterance followed by an end-of-turn token (EOT). LIMA adds EOT
as a new token rather than reusing EOS, so that the pretrained meaning of EOS is left alone; its id
is the first one past the sentencepiece pieces, and the model's vocabulary grows by one.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import sentencepiece as spm

from lima_jax.errors import LimaError
from lima_jax.storage.paths import Path

TRAIN_ON = ("assistant", "all")


class ChatTokenizer:
    """Encodes conversations for training (ids + loss mask) and prompts for sampling."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        if not Path(self.path).is_file():
            raise LimaError(f"tokenizer model {self.path} not found")
        try:  # from its bytes: sentencepiece reads local files only, the model may be on gs://
            self.sp = spm.SentencePieceProcessor(model_proto=Path(self.path).read_bytes())
        except (OSError, RuntimeError) as e:
            raise LimaError(f"tokenizer model {self.path}: not a sentencepiece model ({e})") from None
        if self.sp.bos_id() < 0 or self.sp.eos_id() < 0:
            raise LimaError(f"tokenizer model {self.path}: it defines no BOS or EOS piece")
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = 0  # padding is masked out by segment ids and weights, so any id will do
        self.num_pieces: int = self.sp.get_piece_size()
        self.eot_id: int = self.num_pieces  # LIMA's new token: the first id past the pieces
        self.vocab_size: int = self.num_pieces + 1

    def encode_conversation(self, turns: Sequence[str], *, max_len: int, train_on: str = "assistant") -> tuple[np.ndarray, np.ndarray]:
        """Token ids and a 0/1 loss mask (int32), both trimmed to `max_len`.

        `loss_mask[i] == 1` when token i is a training target, i.e. is predicted from the tokens
        before it: with train_on="assistant" every assistant utterance (odd turn index) and its
        EOT; with "all" every token but the leading BOS.
        """
        if train_on not in TRAIN_ON:
            raise LimaError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
        if max_len < 1:
            raise LimaError(f"max_len must be positive, got {max_len}")
        ids, mask = [self.bos_id], [0]
        for i, text in enumerate(turns):
            if len(ids) >= max_len:
                break  # the rest would be trimmed: don't spend time encoding it
            pieces = self.sp.encode(text) + [self.eot_id]
            ids += pieces
            mask += [int(train_on == "all" or i % 2 == 1)] * len(pieces)
        return np.asarray(ids[:max_len], np.int32), np.asarray(mask[:max_len], np.int32)

    def encode_prompt(self, turns: Sequence[str]) -> list[int]:
        """BOS + every turn + EOT: the context from which the model writes the next assistant turn."""
        if len(turns) % 2 != 1:
            raise LimaError(f"a prompt must end with a user turn (an odd number of turns), got {len(turns)} turns")
        ids = [self.bos_id]
        for text in turns:
            ids += self.sp.encode(text) + [self.eot_id]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` up to the first EOT or EOS; BOS and ids outside the pieces are dropped."""
        out: list[int] = []
        for i in (int(x) for x in ids):
            if i in (self.eot_id, self.eos_id):
                break
            if i != self.bos_id and 0 <= i < self.eot_id:
                out.append(i)
        return self.sp.decode(out)
