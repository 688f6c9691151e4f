"""The judging and report commands never import JAX: `--help` and a whole judging run stay light."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", ["evaluate.report", "evaluate.pairwise", "evaluate.absolute", "evaluate.dialogue"])
def test_command_help_imports_no_jax(command):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", f"lima_jax.{command}", "--help"],
                       capture_output=True, text=True)
    assert "usage" in r.stdout.lower() or "flags" in r.stdout.lower(), r.stdout[-500:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "lima_jax.cli" in imported  # the measurement sees our imports
    assert not {m for m in imported if m == "jax" or m.startswith("jax.")}, "JAX was imported"


def test_a_report_runs_without_jax(tmp_path):
    cache = tmp_path / "absolute.jsonl"
    cache.write_text('{"key": "k1", "kind": "absolute", "judge": "j", "prompt_id": "p1", "verdict": "Pass", '
                     '"output_hash": "h", "version": 1}\n')
    code = ("import runpy, sys; sys.argv = ['report', '--out_dir=%s', '--absolute=%s', '--bootstrap=10'];"
            "\ntry:\n    runpy.run_module('lima_jax.evaluate.report', run_name='__main__')\nexcept SystemExit as e:\n"
            "    print('jax loaded:', 'jax' in sys.modules, 'exit:', e.code)") % (tmp_path / "report", cache)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().splitlines()[-1] == "jax loaded: False exit: 0", r.stdout[-800:] + r.stderr[-800:]
