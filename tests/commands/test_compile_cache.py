"""JAX's persistent compilation cache is on for every command (lima_jax.storage.compile_cache): per user by
default, where `--compilation_cache` or `JAX_COMPILATION_CACHE_DIR` says, off with `--compilation_cache=off`,
and a folder that cannot be written costs one warning line, never the command.

Each test runs `python -m lima_jax.sample` on stories260K (a real pretrained model, 4 s a run) in a fresh
process whose HOME and cache folders are under tmp_path: the session's own cache is taken out of its
environment, and nothing reaches the user's ~/.cache. The session keeps every program (min compile time 0)."""
import os
import subprocess
import sys

import pytest
from support.commands import call_command, succeeded
from support.paths import STORIES260K, require

PROMPT = ("--prompt_ids=1,403,407,262", "--temperature=0", "--max_new_tokens=4", "--print_ids")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("stories") / "ckpt"
    succeeded(call_command("convert", f"--input={require(STORIES260K)}", f"--output={out}"))
    return out


def _environment(tmp_path, **extra: str) -> dict[str, str]:
    """The test process's environment less its cache folder, with a home of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
    return {**env, "HOME": str(tmp_path / "home"), **extra}


def _sample(ckpt, env, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lima_jax.sample", f"--checkpoint={ckpt}", *PROMPT, *flags],
                          env=env, capture_output=True, text=True, timeout=300)


def _entries(folder) -> set[str]:
    return set(os.listdir(folder)) if folder.is_dir() else set()


@pytest.mark.parametrize("xdg", [False, True], ids=["home", "xdg_cache_home"])
def test_a_command_keeps_its_programs_in_the_users_cache_and_a_rerun_loads_them(ckpt, tmp_path, xdg):
    env = _environment(tmp_path, **({"XDG_CACHE_HOME": str(tmp_path / "xdg")} if xdg else {}))
    folder = (tmp_path / "xdg" if xdg else tmp_path / "home" / ".cache") / "lima_jax" / "jax"
    first = _sample(ckpt, env)
    assert first.returncode == 0 and first.stderr == "", first.stderr[-2000:]  # no warning from the cache
    kept = _entries(folder)
    assert kept, "nothing was cached"
    again = _sample(ckpt, env)
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr[-2000:]
    assert _entries(folder) == kept  # every program was found: none compiled and written again


def test_the_flag_names_the_folder_before_the_environment(ckpt, tmp_path):
    env = _environment(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "from_env"))
    r = _sample(ckpt, env, f"--compilation_cache={tmp_path / 'from_flag'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _entries(tmp_path / "from_flag") and not _entries(tmp_path / "from_env")


def test_off_writes_no_cache(ckpt, tmp_path):
    r = _sample(ckpt, _environment(tmp_path), "--compilation_cache=off")
    assert r.returncode == 0 and r.stdout.split() and r.stderr == "", r.stderr[-2000:]
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("given_by", ["flag", "environment"])
def test_a_cache_folder_that_cannot_be_written_is_one_warning_and_the_command_runs(ckpt, tmp_path, given_by):
    (tmp_path / "a_file").write_text("")
    folder = tmp_path / "a_file" / "cache"  # under a file: no one can create it, root included
    env = _environment(tmp_path, **({"JAX_COMPILATION_CACHE_DIR": str(folder)} if given_by == "environment" else {}))
    r = _sample(ckpt, env, *([f"--compilation_cache={folder}"] if given_by == "flag" else []))
    assert r.returncode == 0 and r.stdout.split(), r.stderr[-2000:]
    [line] = r.stderr.splitlines()
    assert line.startswith(f"warning: compilation cache {folder}: cannot write there (") and "Not a directory" in line
    assert line.endswith("; running without it")


def _decided(env: dict[str, str], code: str) -> str:
    """What lima_jax.storage.compile_cache sets, in a process that never imports JAX."""
    r = subprocess.run([sys.executable, "-c", "import os, sys\nfrom lima_jax.storage import compile_cache\n" + code
                        + "\nprint(os.environ.get('JAX_COMPILATION_CACHE_DIR'), 'jax' in sys.modules)"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_a_run_of_several_processes_keeps_its_cache_in_the_workdir_unless_one_is_named(tmp_path):
    run = tmp_path / "run"
    pod = "compile_cache.use(None); compile_cache.use_run_dir(%r)" % str(run)
    assert _decided(_environment(tmp_path), pod) == f"{run / 'compilation_cache'} False"
    named = _environment(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine"))
    assert _decided(named, pod) == f"{tmp_path / 'mine'} False"
    flagged = "compile_cache.use(%r); compile_cache.use_run_dir(%r)" % (str(tmp_path / "flag"), str(run))
    assert _decided(_environment(tmp_path), flagged) == f"{tmp_path / 'flag'} False"


def test_a_cache_in_a_bucket_is_written_there(ckpt, tmp_path, emulator):
    env = _environment(tmp_path, STORAGE_EMULATOR_HOST=emulator.url)
    r = _sample(ckpt, env, f"--compilation_cache=gs://{emulator.bucket}/runs/x/compilation_cache")
    assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
    names = emulator.names("runs/x/")
    assert any(n.startswith("runs/x/compilation_cache/jit_") and n.endswith("-cache") for n in names), names


def test_a_folder_chosen_after_jax_was_imported_is_the_one_written(tmp_path):
    """A pod's train command joins the other processes (importing JAX) before it points the cache at its workdir."""
    code = ("import jax, jax.numpy as jnp\nfrom lima_jax.storage import compile_cache\ncompile_cache.use_run_dir(%r)\n"
            "jax.jit(lambda x: x * 2 + 1)(jnp.ones(3)).block_until_ready()" % str(tmp_path / "run"))
    r = subprocess.run([sys.executable, "-c", code], env=_environment(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
    assert any(name.endswith("-cache") for name in _entries(tmp_path / "run" / "compilation_cache"))
