"""Without a TPU, an installed libtpu's probe stays off stderr (lima_jax.tpu_probe)."""
import importlib.util
import os
import subprocess
import sys

import pytest

import lima_jax as tpu_probe  # the probe's quieting lives in the package's __init__

from support.paths import REPO
PROBE_LINES = ("Failed to find host bounds", "unexpected worker hostname", "Source Location Trace",
               "could not determine TPU", "Logging before InitGoogle")

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu is not installed (pip install -e .[aot]): there is no TPU probe to quiet")
no_tpu = pytest.mark.skipif(tpu_probe.tpu_attached(), reason="a TPU is attached: libtpu's probe finds it, nothing to quiet")


def _python(code: str) -> subprocess.CompletedProcess:
    """Runs code as a lima_jax command would start, with no JAX_PLATFORMS and no TPU slice variables."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS" and k not in tpu_probe._SLICE_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    # A dry run in the other test worker may hold libtpu at the same time: without this, libtpu's lockfile
    # refuses a second process ("Internal error when accessing libtpu multi-process lockfile"), as seen here.
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(p in line for p in PROBE_LINES)]


@needs_libtpu
@no_tpu
def test_importing_lima_jax_quiets_the_tpu_probe():
    bare = _python("import jax; print(jax.devices())")
    if not _noise(bare.stderr):
        pytest.skip("this libtpu probes quietly by itself: nothing to compare against")
    r = _python("import lima_jax, jax; print(jax.devices()); print(jax.default_backend())")
    assert _noise(r.stderr) == [], r.stderr
    assert r.stdout.split()[-1] in ("cpu", "gpu")  # JAX still picks its own backend


@needs_libtpu
@no_tpu
def test_tpu_topologies_still_load_and_quietly():
    r = _python("import lima_jax\n"
                "from jax.experimental import topologies\n"
                "t = topologies.get_topology_desc('v4:4x4x4', 'tpu', chip_config_name='megacore')\n"
                "print(len(t.devices), max(d.process_index for d in t.devices) + 1)")
    assert r.stdout.split() == ["64", "16"]  # 64 chips on 16 hosts: the lone-host description leaves slices alone
    assert _noise(r.stderr) == [], r.stderr


def test_a_slice_described_by_the_user_or_an_attached_tpu_is_left_alone(monkeypatch):
    for var in tpu_probe._SLICE_VARS:  # set first so that monkeypatch restores each one afterwards
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setattr(tpu_probe, "tpu_attached", lambda: True)
    assert tpu_probe.quiet_tpu_probe() is False and "TPU_HOST_BOUNDS" not in os.environ

    monkeypatch.setattr(tpu_probe, "tpu_attached", lambda: False)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w-0,w-1")
    assert tpu_probe.quiet_tpu_probe() is False and "TPU_HOST_BOUNDS" not in os.environ

    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    assert tpu_probe.quiet_tpu_probe() is True
    assert (os.environ["TPU_HOST_BOUNDS"], os.environ["TPU_WORKER_HOSTNAMES"]) == ("1,1,1", "localhost")
