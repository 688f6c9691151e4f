"""An interactive multi-turn chat in LIMA's training format.

    python -m lima_jax.chat --checkpoint=runs/tiny [--temperature=0.7 --top_p=0.9 --repetition_penalty=1.2]

Type a message and press Enter; `/reset` starts a new conversation, `/quit` (or end of input) leaves.
The whole conversation so far is the prompt of each answer; the oldest exchanges are dropped when it
would not fit the model's context. A message too long to answer within the context, or a line that is
not in the terminal's encoding, is refused in one line and the session goes on.
"""
from __future__ import annotations

import sys

from absl import flags

from lima_jax.cli import check_exists, define_dtype_flag, define_sampling_flags, no_arguments, run
from lima_jax.errors import LimaError

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a checkpoint, a step directory, or a run's workdir")
_SAMPLING = define_sampling_flags()
_DTYPE = define_dtype_flag()


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not _CHECKPOINT.value:
        raise LimaError("--checkpoint is required")
    params = _SAMPLING.params()
    check_exists(_CHECKPOINT.value, "checkpoint")
    # The input is checked: now JAX.
    from lima_jax.inference.chat import chat, decoded_lines
    from lima_jax.inference.generator import Generator

    generator = Generator(_CHECKPOINT.value, dtype=_DTYPE.value)
    if generator.eot_id is None:
        raise LimaError(f"{_CHECKPOINT.value} was not fine-tuned with LIMA's end-of-turn token: chat needs a fine-tuned model")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    lines = decoded_lines(sys.stdin.buffer, sys.stdin.encoding or "utf-8", write)
    chat(generator, lines, write, params, _SAMPLING.seed.value)


if __name__ == "__main__":
    run(main)
