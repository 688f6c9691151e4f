"""The shared `__main__` wrapper: absl flags in, one-line errors out.

A bad flag or config override prints one line naming it and exits 2 before any work; a LimaError
from the run does the same; any other failure exits 1. `--verbose` adds the traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, NoReturn

from absl import app, flags, logging

from lima_jax.config import check_overrides, describe_flag_error
from lima_jax.errors import LimaError, run_main

flags.DEFINE_bool("verbose", False, "print tracebacks with errors")


def define(kind: str, name: str, default, help_string: str) -> flags.FlagHolder:
    """`flags.DEFINE_<kind>`, sharing a flag another entry point already defined: every command runs
    in its own process, but the tests import several of them into one."""
    if name in flags.FLAGS:
        return flags.FlagHolder(flags.FLAGS, flags.FLAGS[name])
    return getattr(flags, f"DEFINE_{kind}")(name, default, help_string)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        check_overrides(argv)
        rest = flags.FLAGS(argv)
    except (flags.Error, LimaError) as e:
        print(f"error: {describe_flag_error(str(e))}", file=sys.stderr)
        sys.exit(2)
    if not flags.FLAGS["verbosity"].present:  # Orbax and JAX log every step at INFO; --verbosity=0 shows it
        logging.set_verbosity(logging.WARNING)
    return rest


def say(message: str) -> None:
    """A line for the user, from process 0 only (logs are quiet unless --verbosity=0)."""
    import jax

    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def run(main: Callable[[list[str]], None]) -> NoReturn:
    """`app.run(main)` with the project's error conventions."""
    app.run(lambda argv: run_main(main, argv, verbose=flags.FLAGS.verbose), flags_parser=_parse_flags)
