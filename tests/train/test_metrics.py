"""What a run logs: TensorBoard scalars that read back, written without importing PyTorch."""
import json
import struct
import subprocess
import sys

import pytest

WRITE = """
import json, sys
from lima_jax.storage.paths import user_path
from lima_jax.train.metrics import MetricsWriter

writer = MetricsWriter(user_path(sys.argv[1]), resume_step=0, total_steps=2, enabled=True)
for step, loss in enumerate([2.5, 1.25]):
    writer.step({"step": step, "epoch": step / 2, "loss": loss, "learning_rate": 1e-5, "grad_norm": 1.0,
                 "tokens_per_s": 10.0, "mfu": 0.1, "padding_fraction": 0.0})
writer.epoch(1, 2, 0.75)
writer.close()
print(json.dumps({"torch_imported": "torch" in sys.modules}))
"""


def events(path):
    """The Event protos of a TensorBoard file (TFRecord framing: length, its CRC, data, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    data, out = path.read_bytes(), []
    while data:
        (length,) = struct.unpack("<Q", data[:8])
        out.append(Event.FromString(data[12:12 + length]))
        data = data[12 + length + 4:]
    return out


def test_tensorboard_scalars_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch wherever it is installed: 1-2 s and hundreds of MB at every training start."""
    r = subprocess.run([sys.executable, "-c", WRITE, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"torch_imported": False}
    (events_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents*")
    scalars = {(v.tag, e.step): v.simple_value for e in events(events_file) for v in e.summary.value}
    assert scalars[("train/loss", 0)] == 2.5 and scalars[("train/loss", 1)] == 1.25
    assert scalars[("dev/loss", 2)] == 0.75
    assert [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()[:2]] == [2.5, 1.25]


FILL = """
import resource, signal, sys
from lima_jax.errors import run_main
from lima_jax.storage.paths import user_path
from lima_jax.train.metrics import MetricsWriter

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG) as a full disk does (ENOSPC)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))


def fill(argv):
    writer = MetricsWriter(user_path(sys.argv[1]), resume_step=0, total_steps=10**6, enabled=True)
    try:
        for step in range(10**6):
            writer.step({"step": step, "epoch": 0.0, "loss": 2.5, "learning_rate": 1e-5, "grad_norm": 1.0,
                         "tokens_per_s": 10.0, "mfu": 0.1, "padding_fraction": 0.0, "note": "x" * int(sys.argv[2])})
    finally:
        writer.close()


run_main(fill, [], verbose=False)
"""


@pytest.mark.parametrize("full, note", [("tensorboard", 0), ("metrics.jsonl", 1000)])
def test_a_writer_that_cannot_write_ends_the_run_in_one_line_never_hangs(tmp_path, full, note):
    """tensorboardX writes from a thread: a full disk killed it and the run then blocked forever on its
    queue. A 64 KiB file-size limit fills the event file first (TensorBoard's records are the larger), or
    metrics.jsonl first when each record carries a long note; the timeout turns a hang into a failure."""
    r = subprocess.run([sys.executable, "-c", FILL, str(tmp_path), str(note)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: writing {tmp_path / full} failed: File too large; the checkpoints saved before it are kept: "
        "fix the cause and rerun the same command to resume")
