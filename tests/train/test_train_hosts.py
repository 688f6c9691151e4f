"""Many hosts, one run: two processes train as one does; two processes of two simulated CPU devices
share one workdir, are preempted together or lose a host mid-save, and the run resumes (on any number of
hosts) as if never stopped.

The preempted run shares a bucket of the Cloud Storage emulator (as a pod shares gs://) and, in the slow
tier, a local directory; the host killed mid-save shares a local directory.

The tests here take 20-60 s each in the suite: every run is two or three `python -m lima_jax.train`
processes (about 10 s each to their first step: import, distributed start-up, the first collectives) whose
steps wait on cross-process collectives, and each test resumes once more."""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import orbax.checkpoint as ocp
import pytest
from etils import epath

from lima_jax.config import load_config
from lima_jax.data import demo_dir
from lima_jax.data.records import read_conversations
from lima_jax.train.loop import train
from support.gcs_emulator import BUCKET
from support.commands import command_line, run_command, start_command
from support.training import SMALL, train_args

STEPS_PER_EPOCH = 20  # 160 demo conversations at 8 per step: two epochs take seconds


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    records, _ = read_conversations(demo_dir() / "train.jsonl")
    path = tmp_path_factory.mktemp("data")
    kept = records[: 8 * STEPS_PER_EPOCH + SMALL["data.dev_size"]]
    (path / "train.jsonl").write_text("".join(json.dumps({"conversations": r["conversations"]}) + "\n" for r in kept))
    return path


def overrides(data_dir, **extra):
    return {**SMALL, "num_epochs": 2, "model.residual_dropout": 0.0, "data.manual_dir": str(data_dir),
            "data.tokenizer": str(demo_dir() / "tokenizer.model"), **extra}


def _caller_handler(signum, frame):  # what a program embedding train() had set for SIGTERM
    pass


@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory):
    """An uninterrupted run as one process on 8 devices (this one: conftest gives it 8)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    before = signal.signal(signal.SIGTERM, _caller_handler)
    try:
        train(load_config("tiny", overrides(data_dir, workdir=str(workdir))))
    finally:
        after = signal.signal(signal.SIGTERM, before)
    return {"metrics": read_metrics(workdir), "sigterm_handler_after": after}


@pytest.fixture(scope="module")
def reference(reference_run):
    return reference_run["metrics"]


class Shared:
    """The workdir every process of a run reads and writes, read back by the test: a local folder, or
    a folder of the emulator's bucket (read through its JSON API, as another machine would)."""

    def __init__(self, workdir: str, bucket=None, env=None):
        self.workdir, self.bucket, self.env = workdir, bucket, env or {}
        self.prefix = workdir.removeprefix(f"gs://{BUCKET}/") + "/" if bucket else None

    def __str__(self) -> str:
        return self.workdir

    def read_text(self, name: str) -> str | None:
        if self.bucket is None:
            path = epath.Path(self.workdir) / name
            return path.read_text() if path.exists() else None
        return self.bucket.read(self.prefix + name).decode() if self.prefix + name in self.bucket.names(self.prefix + name) else None

    def complete_steps(self) -> list[int]:
        if self.bucket is None:
            return sorted(ocp.utils.checkpoint_steps(epath.Path(self.workdir) / "checkpoints"))
        # On GCS (no atomic rename) Orbax marks a finished step with a commit file.
        names = self.bucket.names(self.prefix + "checkpoints/")
        tails = [n.removeprefix(self.prefix + "checkpoints/").split("/") for n in names]
        return sorted(int(t[0]) for t in tails if len(t) == 2 and t[1] == "commit_success.txt")


# The local variant is the slow tier's: the default tier has the same preemption on a bucket, and two hosts
# sharing a local folder in the kill mid-save test below.
@pytest.fixture(params=["gs", pytest.param("local", marks=pytest.mark.slow)])
def shared_workdir(request, tmp_path):
    if request.param == "local":
        return Shared(str(tmp_path / "shared"))
    bucket = request.getfixturevalue("emulator")
    env = {"STORAGE_EMULATOR_HOST": bucket.url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return Shared(f"gs://{BUCKET}/{tmp_path.name}/shared", bucket, env)


def read_metrics(workdir):
    text = workdir.read_text("metrics.jsonl") if isinstance(workdir, Shared) else (epath.Path(workdir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def complete_steps(workdir):
    return workdir.complete_steps()


def steps_being_saved(workdir):
    """Steps whose save has begun and not finished (Orbax's temporary checkpoints: a `.orbax-checkpoint-tmp`
    directory locally, a directory without its commit file on GCS)."""
    directory = epath.Path(str(workdir)) / "checkpoints"
    if not directory.exists():
        return []
    return [ocp.path.step.step_from_checkpoint_name(n) for n in ocp.path.step.tmp_checkpoints(directory)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RUNNING = []  # what a failed test leaves behind is killed after it


@pytest.fixture(autouse=True)
def _kill_leftovers():
    yield
    while _RUNNING:
        p = _RUNNING.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def launch(workdir, config, num_processes, devices):
    """`python -m lima_jax.train` as `num_processes` processes of `devices` CPU devices each; stderr
    goes to a file (a pipe nobody reads until the end could fill and stall a process)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               **getattr(workdir, "env", {}))
    flags = command_line("train", "--config=tiny", f"--config.workdir={workdir}", *(f"--config.{k}={v}" for k, v in config.items()))
    if num_processes > 1:
        port = _free_port()
        hosts = [[f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}", f"--process_id={i}"]
                 for i in range(num_processes)]
    else:
        hosts = [[]]
    procs = []
    for h in hosts:
        log = tempfile.TemporaryFile("w+")
        procs.append(subprocess.Popen(flags + h, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True))
        procs[-1].log = log
    _RUNNING.extend(procs)
    return procs


def finish(procs, timeout=300):
    """Each process's (return code, stderr)."""
    results = []
    for p in procs:
        p.wait(timeout=timeout)
        p.log.seek(0)
        results.append((p.returncode, p.log.read()))
    return results


def wait_for(predicate, procs, timeout=240):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail(f"timed out or a process ended early: {[(c, e[-2000:]) for c, e in finish(procs)]}")
        time.sleep(0.01)


def steps_done(proc) -> int:
    """The last step a process's progress bar shows (its stderr: a gs:// metrics.jsonl is uploaded only
    every few seconds, which may be after the run ends)."""
    proc.log.seek(0)
    return max(map(int, re.findall(r"\| (\d+)/\d+ \[", proc.log.read())), default=0)


def assert_same_losses(got, want):
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        key = "loss" if "loss" in b else "dev_loss"
        assert a[key] == pytest.approx(b[key], rel=1e-5), (a, b)


def test_a_run_in_a_program_gives_back_its_sigterm_handler(reference_run):
    assert reference_run["sigterm_handler_after"] is _caller_handler
    assert len(reference_run["metrics"]) == 2 * STEPS_PER_EPOCH + 2  # a dev loss after each epoch


def test_two_hosts_preempted_mid_epoch_resume_as_one_like_an_uninterrupted_run(data_dir, reference, shared_workdir):
    """40-70 s: two hosts' processes train past the first epoch on the bucket (every byte through the
    emulator's HTTP API), then a third resumes and finishes the run."""
    config = overrides(data_dir)
    procs = launch(shared_workdir, config, num_processes=2, devices=2)
    wait_for(lambda: steps_done(procs[0]) >= STEPS_PER_EPOCH + 3, procs)  # mid-way through epoch 2
    for p in procs:
        p.send_signal(signal.SIGTERM)
    results = finish(procs)
    saved = set()
    for i, (code, err) in enumerate(results):
        assert code == 0, err[-3000:]
        saved |= set(re.findall(rf"process {i}: preempted: saved step (\d+) of", err))
    assert len(saved) == 1, results  # both hosts stopped after the same step and said so
    stop = int(saved.pop())
    assert STEPS_PER_EPOCH < stop < 2 * STEPS_PER_EPOCH
    assert complete_steps(shared_workdir) == [STEPS_PER_EPOCH, stop]

    [(code, err)] = finish(launch(shared_workdir, config, num_processes=1, devices=8))
    assert code == 0, err[-3000:]
    assert f"at step {stop} of {2 * STEPS_PER_EPOCH}" in err
    assert_same_losses(read_metrics(shared_workdir), reference)


def test_a_host_killed_mid_save_leaves_the_last_complete_step_to_resume_from(data_dir, reference, tmp_path):
    """About 40 s: two hosts' processes train to their second save, and one process resumes from step 4
    to the end of the run."""
    shared_workdir = Shared(str(tmp_path / "shared"))
    config = overrides(data_dir, **{"checkpoint.every_steps": 4})
    procs = launch(shared_workdir, config, num_processes=2, devices=2)
    wait_for(lambda: 8 in steps_being_saved(shared_workdir), procs, timeout=300)  # the second save has begun
    procs[1].kill()  # kill -9 of one host while its shards are being written
    procs[1].wait()
    time.sleep(3)  # a save takes well under a second: time enough for process 0 to finalize, were it to
    assert 8 in steps_being_saved(shared_workdir) and complete_steps(shared_workdir) == [4]
    procs[0].kill()  # the cluster tears the job down; its restart is a new launch
    procs[0].wait()

    [(code, err)] = finish(launch(shared_workdir, config, num_processes=1, devices=8))
    assert code == 0, err[-3000:]
    assert "at step 4 of 40" in err
    assert complete_steps(shared_workdir)[-1] == 40 and not steps_being_saved(shared_workdir)
    assert_same_losses(read_metrics(shared_workdir), reference)


@pytest.mark.slow
def test_two_processes_train_like_one(data_dir, reference, tmp_path):
    """Two processes of two devices each train the module's run to the losses one process of eight gives.
    The slow tier's: in the default tier the preempted test's two hosts train the same run to the same
    losses up to their preemption (past the first epoch), and the host killed mid-save's do up to step 4."""
    shared_workdir = Shared(str(tmp_path / "two"))
    results = finish(launch(shared_workdir, overrides(data_dir), num_processes=2, devices=2))
    assert all(code == 0 for code, _ in results), [err[-2000:] for _, err in results]
    assert_same_losses(read_metrics(shared_workdir), reference)


@pytest.mark.slow
def test_two_processes_train_the_whole_demo_like_one(tmp_path):
    """Two processes of two devices each, and one of four, train the same run on the whole demo (96 steps
    of 16 rows of 128 tokens) to the same losses."""
    common = ["--config.model.residual_dropout=0.0", "--config.batch_size=16", "--config.data.max_len=128",
              "--config.num_epochs=2"]
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    port = _free_port()
    procs = [start_command("train", *train_args(tmp_path / "two", *common, f"--coordinator_address=127.0.0.1:{port}",
                                                "--num_processes=2", f"--process_id={i}"), env=env)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    one = run_command("train", *train_args(tmp_path / "one", *common),
                      env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert one.returncode == 0, one.stderr[-2000:]
    two, one = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    assert len(two) == len(one) > 3
    assert_same_losses(two, one)
