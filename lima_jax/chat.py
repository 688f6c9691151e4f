"""An interactive multi-turn chat in LIMA's training format.

    python -m lima_jax.chat --checkpoint=runs/tiny [--temperature=0.7 --top_p=0.9 --repetition_penalty=1.2]

Type a message and press Enter; `/reset` starts a new conversation, `/quit` (or end of input) leaves.
The whole conversation so far is the prompt of each answer, so the history is capped by the model's
context: the oldest exchanges are dropped when it would not fit.
"""
from __future__ import annotations

import sys

from lima_jax.cli import run
from lima_jax.errors import LimaError
from lima_jax.sample import _CHECKPOINT, _SEED, Generator, sampling_params

RESET, QUIT = "/reset", "/quit"


def chat(generator: Generator, lines, write, params, seed: int) -> None:
    history: list[str] = []
    write(f"lima_jax chat: {RESET} starts over, {QUIT} leaves.\n")
    turn = 0
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
        ids = generator([prompt], params, seed + turn)[0]
        answer = generator.decode(ids)
        history.append(answer)
        write(f"assistant: {answer}\n")
        turn += 1


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise LimaError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _CHECKPOINT.value:
        raise LimaError("--checkpoint is required")
    params = sampling_params()
    generator = Generator(_CHECKPOINT.value)
    if generator.eot_id is None:
        raise LimaError(f"{_CHECKPOINT.value} was not fine-tuned with LIMA's end-of-turn token: chat needs a fine-tuned model")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat(generator, sys.stdin, write, params, _SEED.value)


if __name__ == "__main__":
    run(main)
