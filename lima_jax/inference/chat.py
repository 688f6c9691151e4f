"""The chat loop behind `python -m lima_jax.chat`: multi-turn, in LIMA's training format.

`/reset` starts a new conversation, `/quit` (or end of input) leaves. The whole conversation so far is the prompt of each answer, so the history is capped by the model's
context: the oldest exchanges are dropped when it would not fit, and a message that alone leaves no room
for an answer is refused in one line (the conversation goes on without it).
"""
from __future__ import annotations

import codecs
from typing import Callable, Iterable, Iterator

from lima_jax.inference.generator import Generator
from lima_jax.inference.sampler import SamplingParams, past_context

RESET, QUIT = "/reset", "/quit"


def chat(generator: Generator, lines: Iterable[str], write: Callable[[str], None], params: SamplingParams, seed: int) -> None:
    history: list[str] = []
    write(f"lima_jax chat: {RESET} starts over, {QUIT} leaves.\n")
    for line in lines:
        message = line.rstrip("\r\n")
        if message.strip() == QUIT:
            return
        if message.strip() == RESET:
            history = []
            write("(new conversation)\n")
            continue
        if not message.strip():
            continue
        turns = history + [message]
        prompt = generator.encode(turns)
        max_len = generator.model.cfg.max_len
        budget = max(max_len - params.max_new_tokens, max_len // 2)
        while len(prompt) > budget and len(turns) > 2:
            turns = turns[2:]  # forget the oldest exchange
            prompt = generator.encode(turns)
        if why := past_context(len(prompt), max_len, "that message"):  # alone, it leaves no room for an answer
            write(f"({why})\n")  # the conversation goes on as it was before it
            continue
        ids = generator([prompt], params, seed)[0]  # the prompt (the whole history) seeds the turn
        answer = generator.decode(ids)
        history = turns + [answer]
        write(f"assistant: {answer}\n")


def decoded_lines(raw: Iterable[bytes], encoding: str, write: Callable[[str], None]) -> Iterator[str]:
    """The lines of `raw` (a terminal's bytes) as text; a line that is not in `encoding` is skipped with
    one line saying so, rather than ending the session (or reaching the tokenizer as lone surrogates)."""
    name = codecs.lookup(encoding).name.upper()
    for line in raw:
        try:
            yield line.decode(encoding)
        except UnicodeDecodeError as e:
            write(f"(that line is not valid {name} (byte 0x{line[e.start]:02x} at column {e.start + 1}): type it again)\n")
