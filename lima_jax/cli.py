"""What every command shares: absl flags in, one-line errors out, and the flag groups several use.

The convention: a command module (`python -m lima_jax.X`) defines its flags at import with
`flags.DEFINE_*` (or a `define_*_flags()` group below), reads them in `main`, and calls library
functions with explicit arguments. No other module imports a command module, so no flag is ever
defined twice. This module imports nothing heavy (no JAX, no config): `--help` and the judging
commands stay fast.

A bad flag or config override prints one line naming it and exits 2 before any work; a LimaError
from the run does the same; any other failure exits 1. `--verbose` adds the traceback.
"""
from __future__ import annotations

import dataclasses
import logging as std_logging
import sys
from typing import Any, Callable, NoReturn

from absl import app, flags, logging

from lima_jax.errors import LimaError, run_main

flags.DEFINE_bool("verbose", False, "print tracebacks with errors")


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        if any(a.startswith("--config") for a in argv[1:]):
            from lima_jax.config import check_overrides  # imports the model: only for commands with a config

            check_overrides(argv)
        rest = flags.FLAGS(argv)
    except (flags.Error, LimaError) as e:
        print(f"error: {describe_flag_error(str(e))}", file=sys.stderr)
        sys.exit(2)
    if not flags.FLAGS["verbosity"].present:  # Orbax and JAX log every step at INFO; --verbosity=0 shows it
        logging.set_verbosity(logging.WARNING)
    if not flags.FLAGS.verbose:  # gcsfs logs each gs:// request it gives up on, traceback and all, then raises
        std_logging.getLogger("gcsfs").setLevel(std_logging.CRITICAL)  # what it raises is the one line we print
    return rest


def describe_flag_error(message: str) -> str:
    """absl's multi-line flag-parsing errors, shortened to the line that names the problem."""
    import re

    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"(config|key|field|type|override|flag)", line, re.I):
            return line
    return lines[-1] if lines else str(message)


def say(message: str) -> None:
    """A line for the user, from process 0 only (logs are quiet unless --verbosity=0)."""
    jax = sys.modules.get("jax")  # a command that never imported JAX is a single process
    if jax is None or jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def no_arguments(argv: list[str]) -> None:
    """Commands take flags only: a stray word (a flag missing its `--`) is an error, not ignored."""
    if len(argv) > 1:
        raise LimaError(f"unexpected arguments: {' '.join(argv[1:])}")


def run(main: Callable[[list[str]], None]) -> NoReturn:
    """`app.run(main)` with the project's error conventions."""
    app.run(lambda argv: run_main(main, argv, verbose=flags.FLAGS.verbose), flags_parser=_parse_flags)


@dataclasses.dataclass(frozen=True)
class SamplingFlags:
    """LIMA's sampling knobs as flags (sample, chat, evaluate.generate, evaluate.select)."""

    temperature: flags.FlagHolder
    top_p: flags.FlagHolder
    repetition_penalty: flags.FlagHolder
    max_new_tokens: flags.FlagHolder
    seed: flags.FlagHolder

    def values(self) -> dict[str, Any]:
        """The sampler's keyword arguments (`inference.sampler.SamplingParams`), without the seed."""
        return {f.name: getattr(self, f.name).value for f in dataclasses.fields(self) if f.name != "seed"}


def define_sampling_flags() -> SamplingFlags:
    return SamplingFlags(
        temperature=flags.DEFINE_float("temperature", 0.7, "0 decodes greedily"),
        top_p=flags.DEFINE_float("top_p", 0.9, "nucleus sampling: the probability mass kept"),
        repetition_penalty=flags.DEFINE_float("repetition_penalty", 1.2, "CTRL-style penalty on tokens already generated (1 = off)"),
        max_new_tokens=flags.DEFINE_integer("max_new_tokens", 2048, "how many tokens to generate at most"),
        seed=flags.DEFINE_integer("seed", 0, "sampling seed: the same seed gives the same text"),
    )
