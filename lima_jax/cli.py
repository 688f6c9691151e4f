"""The shared `__main__` wrapper: absl flags in, one-line errors out.

A bad flag or config override prints one line naming it and exits 2 before any work; a LimaError
from the run does the same; any other failure exits 1. `--verbose` adds the traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, NoReturn

from absl import app, flags

from lima_jax.config import check_overrides, describe_flag_error
from lima_jax.errors import LimaError, run_main

flags.DEFINE_bool("verbose", False, "print tracebacks with errors")


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        check_overrides(argv)
        return flags.FLAGS(argv)
    except (flags.Error, LimaError) as e:
        print(f"error: {describe_flag_error(str(e))}", file=sys.stderr)
        sys.exit(2)


def run(main: Callable[[list[str]], None]) -> NoReturn:
    """`app.run(main)` with the project's error conventions."""
    app.run(lambda argv: run_main(main, argv, verbose=flags.FLAGS.verbose), flags_parser=_parse_flags)
