"""Ctrl-C stops a command with one line and exit 130 (128 + SIGINT), as shells expect, not a traceback through
JAX's compiler (the training run has its own Ctrl-C: it saves first, tests/train/test_faults.py)."""
import signal
import subprocess
import sys
import time

from support.serving import free_port, tiny_checkpoint


def test_ctrl_c_during_the_servers_warm_up_is_one_line_and_exit_130(tmp_path):
    ckpt = tiny_checkpoint(tmp_path, max_len=256)  # a context of 256: 24 programs to compile, seconds of warm-up
    server = subprocess.Popen([sys.executable, "-m", "lima_jax.serve", f"--checkpoint={ckpt}", f"--port={free_port()}",
                               "--compilation_cache=off"], stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.time() + 120
    while "serve: compiling" not in seen and time.time() < deadline and server.poll() is None:
        seen += server.stderr.read(1)  # the progress bar's first characters: the warm-up has begun
    server.send_signal(signal.SIGINT)
    rest = server.communicate(timeout=60)[1]
    assert server.returncode == 130, (seen + rest)[-2000:]
    assert "Traceback" not in rest and rest.strip().splitlines()[-1] == "interrupted (Ctrl-C)"
