"""The chat loop behind `python -m lima_jax.chat`: multi-turn, in LIMA's training format.

`/reset` starts a new conversation, `/quit` (or end of input) leaves. The whole conversation so far is the prompt of each answer, so the history is capped by the model's
context: the oldest exchanges are dropped when it would not fit.
"""
from __future__ import annotations

from typing import Callable, Iterable

from lima_jax.inference.generator import Generator
from lima_jax.inference.sampler import SamplingParams

RESET, QUIT = "/reset", "/quit"


def chat(generator: Generator, lines: Iterable[str], write: Callable[[str], None], params: SamplingParams, seed: int) -> None:
    history: list[str] = []
    write(f"lima_jax chat: {RESET} starts over, {QUIT} leaves.\n")
    for line in lines:
        message = line.rstrip("\n")
        if message.strip() == QUIT:
            return
        if message.strip() == RESET:
            history = []
            write("(new conversation)\n")
            continue
        if not message.strip():
            continue
        history.append(message)
        prompt = generator.encode(history)
        max_len = generator.model.cfg.max_len
        budget = max(max_len - params.max_new_tokens, max_len // 2)
        while len(prompt) > budget and len(history) > 2:
            history = history[2:]  # forget the oldest exchange
            prompt = generator.encode(history)
        ids = generator([prompt], params, seed)[0]  # the prompt (the whole history) seeds the turn
        answer = generator.decode(ids)
        history.append(answer)
        write(f"assistant: {answer}\n")
