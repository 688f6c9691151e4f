"""What the user is told when something is wrong: the project's one-line errors and the wrapper every
`__main__` uses to report them."""
from __future__ import annotations

import sys
import traceback
from typing import Callable, Mapping, NoReturn


class LimaError(Exception):
    """A problem with the user's input (file, key, tensor), told in one line."""


def namer(names: Mapping[str, str] | None) -> Callable[[str], str]:
    """How an error names an argument: as the caller calls it, `names[argument]` (a command its flag, the
    server a request's field), else by the argument's own name. So libraries name no flags."""
    return lambda argument: (names or {}).get(argument, argument)


class RunFailure(Exception):
    """A failure of the run itself (a full disk, a lost bucket), told in one line with what survived."""


def run_main(main: Callable[[list[str]], None], argv: list[str], verbose: bool) -> NoReturn:
    """Runs `main`; a LimaError becomes one line on stderr and exit 2, any other failure exit 1, Ctrl-C
    (where the command has no handler of its own) exit 130, as shells expect of SIGINT.

    The traceback is printed only with `--verbose`.
    """
    try:
        main(argv)
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print("interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    except LimaError as e:
        if verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunFailure as e:
        if verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - a runtime failure still gets one readable line
        if verbose:
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {e} (rerun with --verbose for the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)

