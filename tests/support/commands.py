"""The one way tests run a lima_jax command: `python -m lima_jax.<module> ARGS` in a new process, as a
user runs it (the session's compilation cache and 8 simulated devices come with the environment)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Any


# A user's environment: this machine's own devices (one CPU device here) and XLA's default optimization, not the
# tests' eight simulated devices and fast-compiling flags (tests/conftest.py).
TEST_ONLY_XLA_FLAGS = ("--xla_force_host_platform_device_count", "--xla_backend_optimization_level")


def _without_xla_flags(*prefixes: str) -> dict[str, str]:
    """The environment's XLA_FLAGS less those starting with `prefixes`."""
    return {"XLA_FLAGS": " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(prefixes))}


USER_ENVIRONMENT = _without_xla_flags(*TEST_ONLY_XLA_FLAGS)
# One CPU device, as a user's shell has, but the tests' fast-compiling flags: for a command whose numbers
# the test does not compare, only their presence and sanity.
ONE_DEVICE_ENVIRONMENT = _without_xla_flags("--xla_force_host_platform_device_count")


def command_line(module: str, *args: str) -> list[str]:
    """The argv of `python -m lima_jax.<module> ARGS` (`module` with or without the `lima_jax.`)."""
    name = module if module.split(".")[0] == "lima_jax" else f"lima_jax.{module}"
    return [sys.executable, "-m", name, *map(str, args)]


def _environment(env: dict[str, str] | None) -> dict[str, str] | None:
    return None if env is None else {**os.environ, **env}


def run_command(module: str, *args: str, cwd=None, env: dict[str, str] | None = None, input: str | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the command to its end; its exit code, stdout and stderr (text) are the caller's to check."""
    return subprocess.run(command_line(module, *args), cwd=cwd, env=_environment(env), input=input,
                          capture_output=True, text=True, timeout=timeout)


def start_command(module: str, *args: str, cwd=None, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """Starts the command in the background (stdout and stderr piped, text, unless `popen` says otherwise)."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(command_line(module, *args), cwd=cwd, env=_environment(env), **options)


def succeeded(result: subprocess.CompletedProcess) -> str:
    """The stdout of a command that must have exited 0 (else its stderr's tail is the failure)."""
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def last_json(stdout: str) -> Any:
    """The JSON object a command prints last (its result line)."""
    return json.loads(stdout.strip().splitlines()[-1])


def last_error(result: subprocess.CompletedProcess) -> str:
    """The one line a failed command ends with."""
    return result.stderr.strip().splitlines()[-1]


def call_command(module: str, *args: str, cwd=None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command run in this process, through its own `__main__` (absl flags, one-line errors, exit code),
    its stdout and stderr captured at the file descriptors: what `run_command` gives, without a new
    interpreter, a JAX import and a trace of every program per call. For commands whose process boundary is
    not what the test checks (signals, kills, exit before JAX, a fresh environment keep `run_command`)."""
    import runpy

    from absl import app, flags

    import lima_jax.cli  # noqa: F401 - defines --verbose once, before the snapshot below

    argv = command_line(module, *args)[2:]
    before = set(flags.FLAGS)
    saved = _ProcessState.save()
    code = 0
    with _captured() as output:
        try:
            if cwd is not None:
                os.chdir(cwd)
            os.environ.update(env or {})
            sys.argv = list(argv)
            app._register_and_parse_flags_with_usage.done = False  # absl parses flags once per process
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            for name in _command_flags(set(flags.FLAGS) - before):  # the next run defines its own
                delattr(flags.FLAGS, name)
            flags.FLAGS.unparse_flags()
            saved.restore()
    return subprocess.CompletedProcess(argv, code, output["stdout"], output["stderr"])


def _command_flags(names: set[str]) -> list[str]:
    """Of the flags defined during a run, lima_jax's own: the command's, its flag groups' and the config
    overrides (`--config.x`, which ml_collections defines from inside absl). A library imported during the
    run (grain, say) keeps the flags it defined, as its module stays imported."""
    from absl import flags

    import lima_jax

    package = os.path.dirname(os.path.abspath(lima_jax.__file__))
    ours = []
    for module, defined in flags.FLAGS.flags_by_module_dict().items():
        if module.split(".")[0] in ("lima_jax", "absl") or os.path.abspath(module).startswith(package + os.sep):
            ours += [f.name for f in defined if f.name in names]
    return sorted(set(ours))


class _ProcessState:
    """What running a command changes in the process and the next test must not inherit."""

    @classmethod
    def save(cls) -> "_ProcessState":
        import logging

        from absl import logging as absl_logging

        state = cls()
        state.cwd, state.environ, state.argv = os.getcwd(), dict(os.environ), list(sys.argv)
        state.unraisablehook = sys.unraisablehook
        state.loggers = {name: list(logging.getLogger(name).filters) for name in ("absl", "asyncio")}
        state.verbosity = absl_logging.get_verbosity()
        return state

    def restore(self) -> None:
        import logging

        from absl import logging as absl_logging

        os.chdir(self.cwd)
        os.environ.clear()
        os.environ.update(self.environ)
        sys.argv = self.argv
        sys.unraisablehook = self.unraisablehook
        for name, filters in self.loggers.items():
            logging.getLogger(name).filters = filters
        absl_logging.set_verbosity(self.verbosity)


@contextlib.contextmanager
def _captured():
    """Everything written to stdout and stderr while it lasts, by Python or by native code: file
    descriptors 1 and 2 and sys.stdout/stderr point at temporary files; their text is in the dict after."""
    output: dict[str, str] = {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved_fds, saved_streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
            sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
            yield output
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            for name, file in (("stdout", out), ("stderr", err)):
                file.seek(0)
                output[name] = file.read().decode("utf-8", errors="backslashreplace")
