"""JAX's persistent compilation cache, on for every command: a rerun loads its compiled programs
instead of compiling them again (the tiny run's first step, the sampler, the server's warm-up).

Where it lives, the first that applies: `--compilation_cache=DIR` (`off`: no cache at all);
`JAX_COMPILATION_CACHE_DIR` from the environment; for a training run of several processes (a pod),
`WORKDIR/compilation_cache` (`gs://` too), so that a slice restarted on fresh machines finds it
(JAX writes entries from process 0 only); else per user, `$XDG_CACHE_HOME/lima_jax/jax`
(`~/.cache/lima_jax/jax`). A folder that cannot be written is one warning line, and the command
runs uncached. Programs that compile in under `MIN_COMPILE_TIME_S` are not kept.

JAX reads its settings from the environment when it is first imported, and the commands import it
only after checking their input: so this module sets the environment, and imports nothing heavy.
"""
from __future__ import annotations

import os
import sys

OFF = "off"
# JAX's default (1 s) skips programs that compile in 0.1-1 s on a 2-core CPU: the tiny run's eval step
# (0.97 s), the sampler's and most of the server's 36 warm-up programs, which add up to more than the
# train step. Below 0.1 s (jnp's one-op programs) reading an entry saves next to nothing.
MIN_COMPILE_TIME_S = 0.1
_DIR, _MIN_TIME, _ENABLE = "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_ENABLE_COMPILATION_CACHE"
_chosen = False  # whether the flag or the environment named the folder (a pod's workdir does not replace it)


def user_cache_dir() -> str:
    """The per-user default: `$XDG_CACHE_HOME/lima_jax/jax`, or `~/.cache/lima_jax/jax`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lima_jax", "jax")


def use(setting: str | None) -> None:
    """Turns the cache on (or off) for this process, before anything compiles. `setting`: the
    `--compilation_cache` flag (None or empty: the environment's folder, else the user's)."""
    global _chosen
    _chosen = bool(setting) or bool(os.environ.get(_DIR))
    if setting == OFF:
        _set({_ENABLE: False})
    else:
        _use_dir(setting or os.environ.get(_DIR) or user_cache_dir())


def use_run_dir(workdir: str) -> None:
    """For a run of several processes: the cache in the run's workdir, unless one was named."""
    if not _chosen:
        _use_dir(f"{os.fspath(workdir).rstrip('/')}/compilation_cache")


def _use_dir(directory: str) -> None:
    from lima_jax.errors import LimaError
    from lima_jax.log import say
    from lima_jax.storage.paths import check_writable, user_path

    directory = os.fspath(user_path(directory))
    try:
        check_writable(directory, "compilation cache")
    except LimaError as e:
        say(f"warning: {e}; running without it")
        _set({_ENABLE: False})
        return
    settings: dict[str, object] = {_DIR: directory}  # on unless JAX_ENABLE_COMPILATION_CACHE=false
    if _MIN_TIME not in os.environ:
        settings[_MIN_TIME] = MIN_COMPILE_TIME_S
    _set(settings)


def _set(settings: dict[str, object]) -> None:
    """Into the environment, which JAX reads when imported (and child commands inherit); into JAX's
    config too where a library imported it already."""
    text = {name: str(value).lower() if isinstance(value, bool) else str(value) for name, value in settings.items()}
    if all(os.environ.get(name) == value for name, value in text.items()):
        return  # as the environment already says (and JAX, when imported, read it)
    os.environ.update(text)
    if "jax" in sys.modules:
        import jax
        from jax.experimental.compilation_cache import compilation_cache

        for name, value in settings.items():
            jax.config.update(name.lower(), value)
        compilation_cache.reset_cache()  # a cache opened before takes the new setting at the next compile
