"""Faults a real run meets (divergence, kills, Ctrl-C, odd inputs): nothing lost, nothing silently wrong."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from support.commands import call_command, last_json, run_command, start_command
from support.paths import SUPPORT
from support.training import (checkpoint_steps, data_dir, demo_records, kill_9_after, on_data, read_metrics,
                              small_config, train_args)

from lima_jax.data import demo_dir
from lima_jax.errors import LimaError
from lima_jax.train.loop import train
from lima_jax.weights import checkpoint


def test_a_diverging_run_stops_at_the_first_non_finite_step_and_never_saves_it(tmp_path):
    """lr 1e6: step 3's gradient norm is NaN. The run used to train on to the end, exit 0, save NaN
    checkpoints and write NaN into metrics.jsonl."""
    config = small_config(tmp_path, **{"optim.lr": 1e6, "optim.end_lr": 1e6, "checkpoint.every_steps": 2})
    with pytest.raises(LimaError) as e:
        train(config)
    message = str(e.value)
    assert message.startswith("step 3 of 100: grad_norm is nan"), message
    assert message.endswith(f"stopped without saving that state; the last checkpoint is step 2 ({tmp_path / 'run' / 'checkpoints' / '2'})")
    steps = sorted(int(p) for p in os.listdir(tmp_path / "run" / "checkpoints") if p.isdigit())
    assert steps == [2]
    _, params = checkpoint.load_params(tmp_path / "run")
    assert all(np.isfinite(np.asarray(a)).all() for a in __import__("jax").tree.leaves(params))
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text and [r["step"] for r in map(json.loads, text.splitlines())] == [1, 2]


def test_a_run_without_a_dev_set_writes_strict_json(tmp_path):
    train(on_data(tmp_path, data_dir(tmp_path / "data", demo_records()[:48]), **{"data.dev_size": 0}))
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text
    epochs = [r for r in map(json.loads, text.splitlines()) if "dev_loss" in r]
    assert epochs == [{"epoch": 1, "step": epochs[0]["step"], "dev_loss": None, "dev_perplexity": None}]


def test_every_saved_step_is_in_the_metrics_after_a_hard_kill(tmp_path):
    """With every_steps, a step's record was written after the next dispatch, but the save already
    covered it: a kill -9 then dropped records for good."""
    workdir = tmp_path / "run"
    kill_9_after(train_args(workdir, "--config.checkpoint.every_steps=1"), workdir, 4)
    saved = checkpoint_steps(workdir)
    logged = [r["step"] for r in read_metrics(workdir) if "loss" in r]
    assert saved and set(saved) <= set(logged), (saved, logged)


def test_ctrl_c_saves_like_sigterm_and_a_finished_run_says_so(tmp_path):
    """About 25 s: the command stopped by SIGINT in its own process, then the run finished and rerun."""
    workdir = tmp_path / "run"
    proc = start_command("train", *train_args(workdir))
    deadline = time.time() + 240
    while time.time() < deadline:
        if (workdir / "metrics.jsonl").exists() and len((workdir / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert "SIGINT received: saving a checkpoint" in err and "preempted: saved step" in err
    assert last_json(out)["status"] == "preempted"
    done = call_command("train", *train_args(workdir))
    assert done.returncode == 0 and last_json(done.stdout)["status"] == "finished"
    again = call_command("train", *train_args(workdir))
    assert again.returncode == 0 and "has finished: step 100 of 100 is saved; nothing to do" in again.stderr
    last = [r for r in read_metrics(workdir) if "loss" in r][-1]
    assert last_json(again.stdout) == last_json(done.stdout) == {"status": "finished", "final_step": 100, "loss": last["loss"]}


# A run that never reaches its next step. It waits in short sleeps, not in one blocking wait: a signal
# that lands on one of JAX's threads reaches Python's handler only once the main thread runs Python again.
STUCK = """
import sys, time
from lima_jax.train.preemption import Preemption

with Preemption():
    print("ready", file=sys.stderr, flush=True)
    while True:
        time.sleep(0.05)
"""


def test_a_second_sigterm_ends_a_stuck_run_at_once():
    """A run stuck after the first SIGTERM (which only asks it to save after the step) ignored every
    further SIGTERM: a pod stayed idle until a person noticed. The bounded waits make a hang a failure."""
    proc = subprocess.Popen([sys.executable, "-c", STUCK], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr.readline() == ("SIGTERM received: saving a checkpoint and stopping after this step "
                                          "(SIGTERM again stops at once)\n")
        with pytest.raises(subprocess.TimeoutExpired):  # still waiting for its step: the first one asks, never ends it
            proc.wait(timeout=0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


def test_a_dev_jsonl_beside_the_training_data_is_the_dev_set(tmp_path):
    """A 100-record train.jsonl with a dev.jsonl beside it used to train on 50: 50 were held out and
    dev.jsonl was ignored, though the README says the folder may hold one."""
    from lima_jax.data import demo_dir
    from lima_jax.data.records import read_conversations

    records, _ = read_conversations(demo_dir() / "train.jsonl")
    data = tmp_path / "data"
    data.mkdir()
    line = lambda r: json.dumps({"conversations": r["conversations"]}) + "\n"  # noqa: E731
    (data / "train.jsonl").write_text("".join(line(r) for r in records[:100]))
    (data / "dev.jsonl").write_text("".join(line(r) for r in records[100:110]))
    r = call_command("train", *train_args(tmp_path / "run", f"--config.data.manual_dir={data}", "--config.data.dev_size=50",
                                          f"--config.data.tokenizer={demo_dir() / 'tokenizer.model'}"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"100 training conversations from {data} and 10 dev conversations from {data / 'dev.jsonl'}" in r.stderr
    written = (tmp_path / "run" / "dev.jsonl").read_text().splitlines()
    assert [json.loads(x)["conversations"] for x in written] == [rec["conversations"] for rec in records[100:110]]


def test_a_resume_on_edited_data_is_refused(tmp_path):
    """Data edited between a preemption and the resume used to go unnoticed: the step count and the
    dev split were recomputed from the new file ("resumed at step 4 of 4")."""
    records = demo_records()
    data = data_dir(tmp_path / "data", records[:48], dev=records[48:56])
    train(on_data(tmp_path, data))
    data_dir(data, records[:24], dev=records[48:56])
    with pytest.raises(LimaError, match=r"holds a run begun on other training conversations \(sha256 [0-9a-f]{12}, now [0-9a-f]{12}; .*inputs.json\)"):
        train(on_data(tmp_path, data))
    data_dir(data, records[:48], dev=records[40:56])
    with pytest.raises(LimaError, match="holds a run begun on other dev conversations"):
        train(on_data(tmp_path, data))
    data_dir(data, records[:48], dev=records[48:56])
    assert train(on_data(tmp_path, data))["status"] == "finished"  # the same inputs: it has finished


def test_lowering_max_to_keep_on_a_resume_is_refused_before_any_step_is_deleted(tmp_path):
    records = demo_records()
    data = data_dir(tmp_path / "data", records[:48], dev=records[48:56])
    train(on_data(tmp_path, data, **{"num_epochs": 3, "checkpoint.max_to_keep": 0}))
    steps = checkpoint_steps(tmp_path / "run")
    assert len(steps) == 3
    with pytest.raises(LimaError) as e:
        train(on_data(tmp_path, data, **{"num_epochs": 3, "checkpoint.max_to_keep": 1}))
    assert str(e.value) == (
        f"config key checkpoint.max_to_keep: 1 would delete 2 of the 3 steps in {tmp_path / 'run' / 'checkpoints'} "
        f"(steps {steps[0]}, {steps[1]}); the run kept every step: resume with --config.checkpoint.max_to_keep=0, "
        "or move those steps elsewhere first"
    )
    assert checkpoint_steps(tmp_path / "run") == steps


def test_a_moved_workdir_and_a_trailing_slash_resume_the_same_run(small_run, tmp_path):
    """The workdir's path was part of the config identity: a trailing slash or a moved run could not resume."""
    shutil.copytree(small_run, tmp_path / "moved")  # the finished run, somewhere else
    done = train(small_config(tmp_path, workdir=str(tmp_path / "moved") + "/"))
    assert done["status"] == "finished"


def test_a_tilde_workdir_is_the_home_folder_everywhere(tmp_path):
    """`--config.workdir=~/run` used to split the run between ./~ and $HOME."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": os.pathsep.join(sys.path)}
    records = demo_records()
    data = data_dir(tmp_path / "data", records[:48], dev=records[48:56])
    r = run_command("train", *train_args("~/run", f"--config.data.manual_dir={data}",
                                         f"--config.data.tokenizer={demo_dir() / 'tokenizer.model'}"), cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.listdir(cwd) == []
    run = tmp_path / "home" / "run"
    assert {"config.json", "inputs.json", "metrics.jsonl", "dev.jsonl", "checkpoints", "tokenizer.model"} <= set(os.listdir(run))


def test_an_empty_config_json_in_the_workdir_is_one_line_naming_it(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("")
    with pytest.raises(LimaError, match=rf"^{tmp_path / 'run' / 'config.json'}: not valid JSON \(Expecting value: line 1 column 1"):
        train(small_config(tmp_path))


def test_checkpoints_without_a_config_json_are_refused_not_resumed_under_any_config(small_run, tmp_path):
    """With config.json gone, a resume took any config (another learning rate, another seed) and
    wrote it as the run's."""
    shutil.copytree(small_run, tmp_path / "run")
    (tmp_path / "run" / "config.json").unlink()
    before = sorted(os.listdir(tmp_path / "run"))
    with pytest.raises(LimaError) as e:
        train(small_config(tmp_path, **{"optim.lr": 1e-2, "seed": 3}))
    assert checkpoint_steps(tmp_path / "run") == [100]
    assert str(e.value) == (
        f"workdir {tmp_path / 'run'} holds inputs.json, metrics.jsonl, dev.jsonl, 1 checkpoint step (the last 100) "
        "but no config.json, so nothing shows they are this run's; restore its config.json or use a new --config.workdir")
    assert sorted(os.listdir(tmp_path / "run")) == before


def test_a_fresh_run_leaves_an_unrelated_metrics_jsonl_whole_and_refuses_the_workdir(tmp_path):
    """A fresh run rewrote an unrelated metrics.jsonl in its workdir to nothing."""
    (tmp_path / "run").mkdir()
    mine = '{"step": 0, "loss": 1.5, "note": "an earlier experiment"}\n'
    (tmp_path / "run" / "metrics.jsonl").write_text(mine)
    with pytest.raises(LimaError, match=r"holds metrics.jsonl but no config.json, so nothing shows they are this run's"):
        train(small_config(tmp_path))
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == mine
    assert sorted(os.listdir(tmp_path / "run")) == ["metrics.jsonl"]


def test_a_truncated_tensor_file_or_a_stray_step_folder_falls_back_to_the_last_whole_step(tmp_path, capfd):
    """A truncated tensor file or an empty `checkpoints/150` used to be taken as the latest step (a
    TensorStore dump or a KeyError)."""
    records = demo_records()
    config = on_data(tmp_path, data_dir(tmp_path / "data", records[:88], dev=records[88:96]), **{"checkpoint.every_steps": 2})
    train(config)
    run = tmp_path / "run"
    uninterrupted = read_metrics(run)
    (run / "checkpoints" / "150").mkdir()
    files = [os.path.join(d, f) for d, _, fs in os.walk(run / "checkpoints" / "11" / "params") for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    capfd.readouterr()
    assert train(config)["status"] == "finished"
    err = capfd.readouterr().err
    assert "warning: checkpoint step 150 cannot be read (no params, model, run); moved" in err
    assert 'warning: checkpoint step 11 cannot be read (OUT_OF_RANGE: Error reading "' in err
    # Only the latest step (11) kept the optimizer state: step 10 resumes with fresh moments, on schedule.
    assert "warning: checkpoint step 10 holds no optimizer state (only the latest step keeps one)" in err
    assert f"resumed {run} at step 10 of 11" in err
    aside = sorted(p for p in os.listdir(run / "checkpoints") if "unreadable" in p)
    assert [p.split(".")[0] for p in aside] == ["11", "150"]
    again = {r["step"]: (r["loss"], r["learning_rate"]) for r in read_metrics(run) if "loss" in r}
    assert again == {r["step"]: (r["loss"], r["learning_rate"]) for r in uninterrupted if "loss" in r}
    assert checkpoint_steps(run)[-1] == 11


def test_a_second_run_on_a_busy_workdir_is_refused_in_one_line(tmp_path):
    """Two trainers on one workdir used to both exit 0, interleaving metrics.jsonl. The first run must still be
    running when the second is refused and when the SIGTERM lands: 100 epochs (10,000 steps, some ten minutes
    here, where the SIGTERM lands within a few hundred steps) hold it there by construction. With one epoch,
    a loaded host once finished all 100 steps before the SIGTERM arrived."""
    workdir = tmp_path / "run"
    args = train_args(workdir, "--config.num_epochs=100")
    first = start_command("train", *args)
    deadline = time.time() + 240  # its first step logged: the SIGTERM handler is in place
    while time.time() < deadline and not ((workdir / "metrics.jsonl").exists() and (workdir / "metrics.jsonl").read_text()):
        time.sleep(0.05)
    second = call_command("train", *args)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=240)
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"error: workdir {workdir} is in use by pid {first.pid} on {__import__('socket').gethostname()} (its lock {workdir / 'lock'} was renewed ")
    assert first.returncode == 0 and json.loads(out.strip().splitlines()[-1])["status"] == "preempted", err[-2000:]
    steps = [r["step"] for r in read_metrics(workdir) if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))
    assert not (workdir / "lock").exists()


def test_a_killed_runs_lock_is_taken_over(tmp_path):
    workdir = tmp_path / "run"
    pid = kill_9_after(train_args(workdir, "--config.checkpoint.every_steps=1"), workdir, 2)
    assert (workdir / "lock").exists()
    r = call_command("train", *train_args(workdir))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"note: taking over {workdir / 'lock'} (pid {pid} on this host has exited)" in r.stderr


def test_a_lock_from_another_host_is_refused_while_renewed_and_taken_once_stale(tmp_path):
    from lima_jax.train.run_dir import WorkdirLock

    lock = tmp_path / "lock"
    lock.write_text(json.dumps({"host": "pod-worker-0", "pid": 1, "token": "x", "renewed": time.time() - 5}))
    with pytest.raises(LimaError, match=rf"^workdir {tmp_path} is in use by pid 1 on pod-worker-0 \(its lock {lock} was renewed 5 s ago\)"):
        WorkdirLock(tmp_path).__enter__()
    lock.write_text(json.dumps({"host": "pod-worker-0", "pid": 1, "token": "x", "renewed": time.time() - 500}))
    with WorkdirLock(tmp_path, renew_s=0.05) as held:
        time.sleep(0.3)
        record = json.loads(lock.read_text())
        assert record["token"] == held.token and time.time() - record["renewed"] < 0.3
    assert not lock.exists()


def test_a_bom_is_accepted_and_a_lone_surrogate_is_a_bad_line_that_skip_invalid_skips(tmp_path, capfd):
    """A lone surrogate (`\\ud800`) used to pass the reader and stop TFDS with exit 1, even with
    skip_invalid; a UTF-8 BOM made line 1 "not valid JSON"."""
    from lima_jax.data.records import read_conversations

    records = demo_records()
    data = data_dir(tmp_path / "data", records[:40], dev=records[40:48])
    lines = (data / "train.jsonl").read_text().splitlines(keepends=True)
    lines.insert(5, '{"conversations": ["Hi \\ud800 there", "Hello."]}\n')
    (data / "train.jsonl").write_text("\ufeff" + "".join(lines), encoding="utf-8")
    with pytest.raises(LimaError, match=rf"^{data / 'train.jsonl'}:6: turn 1 holds a lone surrogate \('\\ud800' at character 4\), which is not text$"):
        read_conversations(data / "train.jsonl")
    assert len(read_conversations(data / "train.jsonl", skip_invalid=True)[0]) == 40
    capfd.readouterr()
    train(on_data(tmp_path, data, **{"data.skip_invalid": True}))
    err = capfd.readouterr().err
    assert "40 training conversations from" in err and "(1 invalid skipped)" in err, err[-2000:]


def test_a_dev_size_as_large_as_the_data_names_the_key_and_the_remedy(tmp_path):
    records = demo_records()
    data = data_dir(tmp_path / "data", records[:20])
    with pytest.raises(LimaError) as e:
        train(on_data(tmp_path, data, **{"data.dev_size": 20}))
    assert str(e.value) == ("config key data.dev_size: holding out 20 dev examples leaves none of the 20 records to train on; "
                            "set --config.data.dev_size below 20, or put a dev.jsonl beside the training data")


@contextlib.contextmanager
def tmpfs(folder, options):
    """A tmpfs mounted at `folder` for the block (skips the test where mounting needs rights it lacks)."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: the workdir fills it at the last checkpoint."""
    with tmpfs(tmp_path / "disk", "size=3m") as disk:
        yield disk


def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_room(small_disk, kill_data):
    """A full disk used to flood stderr with 5-11 Orbax tracebacks around the last line."""
    workdir = small_disk / "run"
    args = train_args(workdir, f"--config.data.manual_dir={kill_data}", f"--config.data.tokenizer={demo_dir() / 'tokenizer.model'}")
    r = run_command("train", *args)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith(("epoch ", "  0%"))]
    assert "Traceback" not in r.stderr and len(lines) == 2, r.stderr[-3000:]
    assert lines[-1] == (f"error: saving checkpoint step 6 in {workdir / 'checkpoints'} failed: No space left on device; "
                         "no step is complete: fix the cause and rerun the same command to start over")
    first = {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    r = run_command("train", *args)
    assert r.returncode == 0 and last_json(r.stdout)["status"] == "finished", r.stderr[-2000:]
    assert {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r} == first
    assert checkpoint_steps(workdir) == [6]


@pytest.fixture(scope="module")
def kill_data(tmp_path_factory):
    """6 steps an epoch, with a dev set: small enough to kill and resume several times."""
    records = demo_records()
    return data_dir(tmp_path_factory.mktemp("kill_data"), records[:48], dev=records[48:56])


KILL_RUN = {"num_epochs": 3, "checkpoint.every_steps": 1, "checkpoint.async_save": True}  # 18 steps, a save after each


def _kill_args(workdir, data):
    return train_args(workdir, f"--config.data.manual_dir={data}", f"--config.data.tokenizer={demo_dir() / 'tokenizer.model'}",
                      *(f"--config.{k}={v}" for k, v in KILL_RUN.items()))


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in records]


@pytest.fixture(scope="module")
def uninterrupted(kill_data, tmp_path_factory):
    """The kill tests' run, never stopped (trained in this process: the same program as the command's)."""
    config = on_data(tmp_path_factory.mktemp("uninterrupted"), kill_data, **KILL_RUN)
    train(config)
    return _without_timing(read_metrics(config.workdir))


# Seeds 1 and 2 (other kill points, the same check) are the slow tier's.
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_kill_9_at_a_random_point_then_resume_gives_the_uninterrupted_metrics(seed, kill_data, uninterrupted, tmp_path):
    import random

    rng = random.Random(seed)
    workdir = tmp_path / "run"
    kill_9_after(_kill_args(workdir, kill_data), workdir, rng.randint(1, 16), rng.uniform(0.0, 0.3))
    r = call_command("train", *_kill_args(workdir, kill_data))
    assert r.returncode == 0, r.stderr[-2000:]
    assert last_json(r.stdout)["status"] == "finished"
    assert _without_timing(read_metrics(workdir)) == uninterrupted
    assert [r["dev_loss"] for r in uninterrupted if "dev_loss" in r] and len(uninterrupted) == 18 + 3


def test_a_kill_during_each_file_rewrite_leaves_the_old_file_whole_and_the_run_resumes(kill_data, uninterrupted, tmp_path):
    """About 25 s: five processes of the command (one killed -9 after step 5, one killed at each file's
    rename), then the run resumed to its end."""
    workdir = tmp_path / "run"
    kill_9_after(_kill_args(workdir, kill_data), workdir, 5)
    script = SUPPORT / "kill_at_rename.py"
    files = ("config.json", "inputs.json", "dev.jsonl", "metrics.jsonl")

    def whole_lines():  # a JSONL line the kill cut short is cut off before the rewrite: the rest must survive
        read = {n: (workdir / n).read_bytes() for n in files}
        return {n: b if n.endswith(".json") else b[: b.rfind(b"\n") + 1] for n, b in read.items()}

    for name in files:
        before = whole_lines()
        r = subprocess.run([sys.executable, script, name, "lima_jax.train", *_kill_args(workdir, kill_data)],
                           capture_output=True, text=True)
        assert r.returncode == 9, r.stderr[-2000:]
        assert whole_lines() == before and all(before.values()), name
    r = call_command("train", *_kill_args(workdir, kill_data))
    assert r.returncode == 0, r.stderr[-2000:]
    assert _without_timing(read_metrics(workdir)) == uninterrupted


# `python -c KILL_AT_DROP MODULE ARGS...`: the command, killed (exit 9, no cleanup) as it deletes the
# optimizer state of a step before the latest, once that step's marker is gone and its tensors are not.
KILL_AT_DROP = """
import os, runpy, shutil, sys
def rmtree(path, *a, **k):
    if os.path.basename(os.fspath(path)) == "opt_state":
        os._exit(9)
shutil.rmtree = rmtree
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def test_a_kill_while_an_old_step_drops_its_optimizer_state_resumes_exactly(kill_data, uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", KILL_AT_DROP, "lima_jax.train", *_kill_args(workdir, kill_data)],
                       capture_output=True, text=True)
    assert r.returncode == 9, r.stderr[-2000:]
    steps = workdir / "checkpoints"
    assert [s for s in checkpoint_steps(workdir) if (steps / str(s) / "opt_state").exists()] == [1, 2]
    r = call_command("train", *_kill_args(workdir, kill_data))
    assert r.returncode == 0, r.stderr[-2000:]
    assert _without_timing(read_metrics(workdir)) == uninterrupted
    assert [s for s in checkpoint_steps(workdir) if (steps / str(s) / "opt_state").exists()] == [18]


def test_a_read_only_workdir_is_one_line_before_any_work(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as disk, pytest.raises(LimaError) as e:
        train(small_config(tmp_path, workdir=str(disk / "run")))
    assert str(e.value) == f"config key workdir: {disk / 'run'}: cannot write there ([Errno 30] Read-only file system: '{disk / 'run'}')"


def test_an_empty_model_record_in_a_checkpoint_is_one_line_naming_its_file(small_run, tmp_path):
    step = tmp_path / "step"
    shutil.copytree(checkpoint.resolve(small_run), step)
    (step / "model" / "metadata").write_text("")
    with pytest.raises(LimaError, match=rf"^{step / 'model' / 'metadata'}: not valid JSON \(Expecting value: line 1 column 1 \(char 0\)\); the checkpoint is damaged$"):
        checkpoint.load_model_config(step)


def test_a_run_begun_before_a_config_key_existed_resumes_when_the_key_is_at_its_default(small_run, tmp_path):
    """A key added to the recipe later (e.g. data.chat_format) is missing from an older run's config.json:
    that run used the default, so it resumes; a value other than the default is refused."""
    shutil.copytree(small_run, tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    del saved["data"]["chat_format"], saved["data"]["train_on"]
    path.write_text(json.dumps(saved))
    assert train(small_config(tmp_path))["status"] == "finished"
    path.write_text(json.dumps(saved))
    with pytest.raises(LimaError, match=r"holds a run with a different config \(key data.train_on\)"):
        train(small_config(tmp_path, **{"data.train_on": "all"}))


def test_asyncio_s_report_of_a_failed_orbax_write_is_left_to_the_one_line_error(tmp_path, monkeypatch):
    """asyncio logs an Orbax write task's exception ("Task exception was never retrieved") with its
    traceback when the task is collected: the run's one-line error already says it; other errors stay."""
    import logging
    import sys

    from lima_jax.cli import _failures_raised_later

    (tmp_path / "orbax").mkdir()
    (tmp_path / "orbax" / "writer.py").write_text("def write():\n    raise ValueError('RESOURCE_EXHAUSTED')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "orbax"))
    import writer

    def record(fn):
        try:
            fn()
        except Exception:
            return logging.getLogger("asyncio").makeRecord(
                "asyncio", logging.ERROR, "asyncio/base_events.py", 1, "Task exception was never retrieved", (), sys.exc_info())

    assert not _failures_raised_later(record(writer.write))
    assert _failures_raised_later(record(lambda: {}["key"]))


def test_asyncio_s_report_of_a_failed_tensorstore_future_is_left_to_the_one_line_error():
    """A full disk also failed TensorStore's own futures, raised in native code (no Python frame): asyncio
    printed "Future exception was never retrieved" and the error beside the one line (a flake of the full-disk
    test). An error without frames that is not TensorStore's status-coded kind stays."""
    import asyncio
    import gc
    import logging

    from lima_jax.cli import _failures_raised_later

    def report_of_unretrieved(exception):
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("asyncio").addHandler(handler)
        loop = asyncio.new_event_loop()
        try:
            future = loop.create_future()
            future.set_exception(exception)
            del future
            gc.collect()
        finally:
            loop.close()
            logging.getLogger("asyncio").removeHandler(handler)
        (record,) = records
        assert record.getMessage().startswith("Future exception was never retrieved")
        return record

    full = ValueError('RESOURCE_EXHAUSTED: Error writing "0.nu.layers.w_down/0.0.6" in OCDBT database at local file '
                      '"/run/checkpoints/100.orbax-checkpoint-tmp/": No space left on device [os_error_code=\'28\']')
    assert not _failures_raised_later(report_of_unretrieved(full))
    assert _failures_raised_later(report_of_unretrieved(ValueError("something else entirely")))


def test_bfloat16_on_a_cpu_is_refused_before_compiling_and_a_run_without_steps_restarts_with_another_config(tmp_path, capsys):
    """A bf16 run on a CPU died at its first step after 1.5 minutes of compiling, and the rerun with float32
    in the same workdir was refused ("a different config (key model.dtype)") though nothing was saved."""
    from lima_jax.config import load_config
    from lima_jax.train.run_dir import check_same_run

    r = call_command("train", "--config=tiny", "--config.model.dtype=bfloat16", f"--config.workdir={tmp_path / 'bf16'}")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        "error: config key model.dtype: bfloat16 does not train on a CPU"), r.stderr
    assert not (tmp_path / "bf16").exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "tiny", "seed": 7}))  # a first attempt, no step saved
    config = load_config("tiny", {"workdir": str(run)})
    assert check_same_run(config, run)["seed"] == 0
    assert "never saved a step, with another config (key seed): starting it over" in capsys.readouterr().err
    (run / "checkpoints" / "10").mkdir(parents=True)  # once a step is saved, the run is resumed or refused
    with pytest.raises(LimaError, match=r"holds a run with a different config \(key seed\)"):
        check_same_run(config, run)


def test_a_run_begun_with_the_removed_log_every_key_resumes(tmp_path):
    """Runs begun before `log_every` was removed recorded it (1) in config.json; with a step saved, they resume."""
    from lima_jax.config import load_config
    from lima_jax.train.run_dir import check_same_run

    config = load_config("tiny", {"workdir": str(tmp_path)})
    (tmp_path / "config.json").write_text(json.dumps({**json.loads(config.to_json_best_effort()), "log_every": 1}))
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    check_same_run(config, tmp_path)  # no "different config (key log_every)"
    (tmp_path / "config.json").write_text(json.dumps({**json.loads(config.to_json_best_effort()), "log_everyx": 1}))
    with pytest.raises(LimaError, match=r"different config \(key log_everyx\)"):  # any other unknown key is refused
        check_same_run(config, tmp_path)
