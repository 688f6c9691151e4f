"""`say`: a line for the user from any module (the config and the libraries included), without
importing the command line."""
from __future__ import annotations

import sys


def say(message: str) -> None:
    """A line for the user, from process 0 only (logs are quiet unless --verbosity=0)."""
    jax = sys.modules.get("jax")  # a command that never imported JAX is a single process
    if jax is None or jax.process_index() == 0:
        sys.stderr.write(message + "\n")  # one write: lines from two threads do not run together
        sys.stderr.flush()
