"""What the tests that talk to `python -m lima_jax.serve` share: a tiny checkpoint, a free port, and
the server started on 127.0.0.1 and waited for."""
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_checkpoint(root, max_len: int = 64):
    """A random model with the demo tokenizer and LIMA's EOT (vocabulary 512 + 1); a short context
    (`max_len`) keeps the server's prompt widths, and so its warm-up, small."""
    from flax import nnx

    from lima_jax.data import demo_dir
    from lima_jax.model import Llama, ModelConfig
    from lima_jax.weights import checkpoint

    cfg = ModelConfig(vocab_size=513, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64, max_len=max_len,
                      init_std=0.2)
    params = nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(0))))
    checkpoint.save(root / "ckpt", params, cfg, tokenizer=demo_dir() / "tokenizer.model")
    return root / "ckpt"


def start_server(ckpt, log, *flags: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m lima_jax.serve` on a free port of 127.0.0.1, its output to `log`; returns the process
    and its base URL (`.../v1`) at once: `wait_until_healthy` waits for it to answer."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lima_jax.serve", f"--checkpoint={ckpt}", f"--port={port}", *flags],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    return server, f"http://127.0.0.1:{port}/v1"


def wait_until_healthy(server: subprocess.Popen, url: str, log, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while True:
        with contextlib.suppress(OSError):  # not listening yet
            with urllib.request.urlopen(url.replace("/v1", "/health"), timeout=30) as r:
                if r.status == 200:
                    return
        if server.poll() is not None or time.time() > deadline:
            log.flush()
            log.seek(0)
            raise AssertionError(f"the server did not start:\n{log.read()[-3000:]}")
        time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=60)
