"""The launch scripts in launch/: syntax, the exact commands they build (DRY_RUN=1), usage errors.

The scripts print each command shell-quoted, one per line; the tests read the lines back with
shlex.split and compare the argument lists. Fake gcloud / srun / scontrol / python executables on
PATH check that the real (non-dry) path runs the same commands.
"""
import os
import pathlib
import shlex
import shutil
import stat
import subprocess

import pytest

from support.paths import REPO

LAUNCH = REPO / "launch"
SCRIPTS = ["tpu_vm.sh", "gpu_node.sh", "slurm.sbatch"]
# Variables the scripts read; cleared so the caller's environment cannot leak into the tests.
SCRIPT_VARS = {"TPU_NAME", "ZONE", "ACCELERATOR", "RUNTIME_VERSION", "PROJECT", "REPO_URL", "CONFIG",
               "WORKDIR", "PYTHON_VERSION", "REMOTE_DIR", "VENV", "LOG", "PYTHON", "INIT", "PORT",
               "DRY_RUN", "TMPDIR", "JAX_LOCAL_DEVICE_IDS", "CHECK"}
TPU_ENV = {"TPU_NAME": "lima-test", "ZONE": "us-central2-b", "ACCELERATOR": "v4-128",
           "CONFIG": "65b", "WORKDIR": "gs://bucket/lima-65b"}
SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu-node[01-02]",
             "SLURM_GPUS_ON_NODE": "8"}
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
# Extra trainer args with a space and a quote, to check they survive the quoting.
EXTRA = ["--config.data.manual_dir=gs://bucket/lima data", "--config.train.num_epochs=1", "it's"]


def launch(script, *args, env=(), dry=True, bin_dir=None, cwd=None):
    base = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARS and not k.startswith("SLURM_")}
    base.update(env)
    if dry:
        base["DRY_RUN"] = "1"
    if bin_dir is not None:
        base["PATH"] = f"{bin_dir}{os.pathsep}{base['PATH']}"
    return subprocess.run(["bash", str(LAUNCH / script), *args], env=base, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def commands(result):
    """The printed commands, each as its argument list."""
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def fake_bin(tmp_path, **scripts):
    """Executables in tmp_path/bin, one per keyword (name: bash body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


# Prints one line per call: its arguments, shell-quoted, as the scripts' DRY_RUN does.
ECHO_ARGS = 'out=(); for a in "$0" "$@"; do out+=("$(printf %q "$a")"); done; echo "${out[*]}"\n'


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(["shellcheck", "-s", "bash", str(LAUNCH / script)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", ["tpu_vm.sh", "gpu_node.sh"])
def test_bad_subcommand_prints_usage_and_fails(script):
    for args in (["bogus"], []):
        result = launch(script, *args)
        assert result.returncode != 0
        assert "usage:" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    result = launch(script, "-h")
    assert result.returncode == 0 and result.stdout.startswith("usage:")


# --- tpu_vm.sh -------------------------------------------------------------------------------

def test_tpu_create():
    assert commands(launch("tpu_vm.sh", "create", env=TPU_ENV)) == [
        TPU + ["create", "lima-test", "--zone=us-central2-b", "--accelerator-type=v4-128",
               "--version=tpu-ubuntu2204-base"]]


def test_tpu_check_compiles_the_job_here_and_create_runs_it_first_when_asked():
    check = ["python", "-m", "lima_jax.train", "--config=65b", "--config.workdir=gs://bucket/lima-65b",
             "--dry_run", "--topology=v4-128", *EXTRA]
    assert commands(launch("tpu_vm.sh", "check", *EXTRA, env=TPU_ENV)) == [check]
    cmds = commands(launch("tpu_vm.sh", "create", *EXTRA, env={**TPU_ENV, "CHECK": "1"}))
    assert cmds[0] == check and cmds[1][:5] == TPU + ["create"] and len(cmds) == 2


def test_tpu_create_is_not_run_when_the_check_fails(tmp_path):
    bin_dir = fake_bin(tmp_path, python='echo "error: 65b does not fit v4-128" >&2; exit 1\n',
                       gcloud=f'echo gcloud "$@" >> {tmp_path}/gcloud.log\n')
    result = launch("tpu_vm.sh", "create", env={**TPU_ENV, "CHECK": "1"}, dry=False, bin_dir=bin_dir)
    assert result.returncode == 1 and "does not fit" in result.stderr
    assert not (tmp_path / "gcloud.log").exists()


def test_tpu_project_is_passed_when_set():
    cmds = commands(launch("tpu_vm.sh", "create", env={**TPU_ENV, "PROJECT": "my-proj"}))
    assert cmds[0][4:7] == ["create", "lima-test", "--zone=us-central2-b"]
    assert "--project=my-proj" in cmds[0]


def test_tpu_delete():
    assert commands(launch("tpu_vm.sh", "delete", env=TPU_ENV)) == [
        TPU + ["delete", "lima-test", "--zone=us-central2-b", "--quiet"]]


def split_ssh(cmd, worker="all"):
    """Checks an ssh command line; returns the remote command."""
    assert cmd[:8] == TPU + ["ssh", "lima-test", "--zone=us-central2-b", f"--worker={worker}"]
    assert len(cmd) == 9 and cmd[8].startswith("--command=")
    return cmd[8].removeprefix("--command=")


def test_tpu_run_on_every_worker_with_passthrough_args():
    cmds = commands(launch("tpu_vm.sh", "run", *EXTRA, env=TPU_ENV))
    assert len(cmds) == 1
    remote = split_ssh(cmds[0])
    assert "python -m lima_jax.train --config=65b" in remote
    # What the worker's shell runs: cd, then the trainer under nohup, logging to a file, in the background.
    words = shlex.split(remote)
    assert words[:4] == ["cd", "~/lima_jax", "&&", "nohup"]
    train = words[4:words.index(">")]
    assert train == ["~/lima_venv/bin/python", "-m", "lima_jax.train", "--config=65b",
                     "--config.workdir=gs://bucket/lima-65b", *EXTRA]
    assert words[words.index(">"):] == [">", "~/lima_jax_train.log", "2>&1", "<", "/dev/null", "&"]


def test_tpu_run_needs_workdir():
    env = {k: v for k, v in TPU_ENV.items() if k != "WORKDIR"}
    result = launch("tpu_vm.sh", "run", env=env)
    assert result.returncode != 0 and "WORKDIR" in result.stderr and result.stdout == ""


def test_tpu_logs_follow_worker_0():
    (cmd,) = commands(launch("tpu_vm.sh", "logs", env=TPU_ENV))
    assert split_ssh(cmd, worker="0") == "tail -n 200 -f ~/lima_jax_train.log"


def test_tpu_stop():
    (cmd,) = commands(launch("tpu_vm.sh", "stop", env=TPU_ENV))
    assert "pkill -f" in split_ssh(cmd)


def test_tpu_install_copies_this_checkout(tmp_path):
    cmds = commands(launch("tpu_vm.sh", "install", env={**TPU_ENV, "TMPDIR": str(tmp_path)}))
    assert len(cmds) == 4
    venv = split_ssh(cmds[0])
    assert "python3.11 -m venv ~/lima_venv" in venv
    tarball = str(tmp_path / "lima_jax_src.tar.gz")
    assert cmds[1][:3] == ["tar", "-czf", tarball] and cmds[1][-3:] == ["-C", str(LAUNCH.parent), "."]
    assert cmds[2] == TPU + ["scp", tarball, "lima-test:lima_jax_src.tar.gz", "--zone=us-central2-b",
                             "--worker=all"]
    remote = split_ssh(cmds[3])
    assert "tar -xzf ~/lima_jax_src.tar.gz -C ~/lima_jax" in remote
    assert remote.endswith('cd ~/lima_jax && ~/lima_venv/bin/pip install -e ".[tpu]"')
    assert not tmp_path.joinpath("lima_jax_src.tar.gz").exists()  # a dry run makes nothing


def test_tpu_install_clones_repo_url():
    env = {**TPU_ENV, "REPO_URL": "https://github.com/example/lima_jax.git"}
    cmds = commands(launch("tpu_vm.sh", "install", env=env))
    assert len(cmds) == 2 and all(c[:5] == TPU + ["ssh"] for c in cmds)
    remote = split_ssh(cmds[1])
    assert "git clone https://github.com/example/lima_jax.git ~/lima_jax" in remote
    assert remote.endswith('pip install -e ".[tpu]"')


def test_tpu_real_run_executes_the_printed_commands(tmp_path):
    """Without DRY_RUN the script runs exactly what DRY_RUN prints (gcloud faked)."""
    bin_dir = fake_bin(tmp_path, gcloud=ECHO_ARGS)
    for sub in ("create", "run", "delete"):
        dry = commands(launch("tpu_vm.sh", sub, *EXTRA, env=TPU_ENV))
        real = commands(launch("tpu_vm.sh", sub, *EXTRA, env=TPU_ENV, dry=False, bin_dir=bin_dir))
        assert [[pathlib.Path(c[0]).name, *c[1:]] for c in real] == dry


# --- gpu_node.sh ------------------------------------------------------------------------------

def test_gpu_install():
    assert commands(launch("gpu_node.sh", "install")) == [["python", "-m", "pip", "install", "-e", ".[gpu]"]]


def test_gpu_run_with_passthrough_args():
    assert commands(launch("gpu_node.sh", "run", *EXTRA, env={"CONFIG": "7b"})) == [
        ["python", "-m", "lima_jax.train", "--config=7b", *EXTRA]]
    assert commands(launch("gpu_node.sh", "run", "--x=1", env={"WORKDIR": "/runs/a b"})) == [
        ["python", "-m", "lima_jax.train", "--config=65b", "--config.workdir=/runs/a b", "--x=1"]]


def test_gpu_real_run(tmp_path):
    bin_dir = fake_bin(tmp_path, python=ECHO_ARGS)
    real = commands(launch("gpu_node.sh", "run", *EXTRA, dry=False, bin_dir=bin_dir))
    assert [[pathlib.Path(c[0]).name, *c[1:]] for c in real] == [
        ["python", "-m", "lima_jax.train", "--config=65b", *EXTRA]]


# --- slurm.sbatch ------------------------------------------------------------------------------

SRUN = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
# A fake scontrol that expands the fake node list; a fake srun that runs its command once per
# node with that task's SLURM_PROCID; a fake python that prints its arguments and device ids.
SCONTROL = '[ "$1 $2" = "show hostnames" ] && printf "gpu-node01\\ngpu-node02\\n"\n'
FAKE_SRUN = ('while [[ $1 == -* ]]; do shift; done\n'
             'for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_PROCID=$i "$@"; done\n')
FAKE_PYTHON = 'echo "$JAX_LOCAL_DEVICE_IDS" "$@"\n'


def test_slurm_sbatch_headers():
    text = (LAUNCH / "slurm.sbatch").read_text()
    for header in ("--nodes=", "--ntasks-per-node=1", "--gpus-per-node=8", "--time=", "--output="):
        assert f"#SBATCH {header}" in text


def test_slurm_auto_detect(tmp_path):
    env = {**SLURM_ENV, "SLURM_SUBMIT_DIR": str(tmp_path), "CONFIG": "65b"}
    assert commands(launch("slurm.sbatch", *EXTRA, env=env)) == [
        ["export", "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"],
        SRUN + ["python", "-m", "lima_jax.train", "--config=65b", *EXTRA]]


def test_slurm_explicit_coordinator(tmp_path):
    env = {**SLURM_ENV, "SLURM_SUBMIT_DIR": str(tmp_path), "INIT": "explicit",
           "WORKDIR": "/shared/runs/x"}
    cmds = commands(launch("slurm.sbatch", "--x=1", env=env, bin_dir=fake_bin(tmp_path, scontrol=SCONTROL)))
    assert cmds[1] == SRUN + [
        "bash", "-c", 'exec "$@" --process_id="$SLURM_PROCID"', "bash",
        "python", "-m", "lima_jax.train", "--config=65b", "--config.workdir=/shared/runs/x",
        "--coordinator_address=gpu-node01:12345", "--num_processes=2", "--x=1"]


@pytest.mark.parametrize("init", ["auto", "explicit"])
def test_slurm_real_run_gives_each_task_its_id(tmp_path, init):
    bin_dir = fake_bin(tmp_path, scontrol=SCONTROL, srun=FAKE_SRUN, python=FAKE_PYTHON)
    env = {**SLURM_ENV, "SLURM_SUBMIT_DIR": str(tmp_path), "INIT": init}
    lines = launch("slurm.sbatch", "--x=1", env=env, dry=False, bin_dir=bin_dir).stdout.splitlines()
    common = "0,1,2,3,4,5,6,7 -m lima_jax.train --config=65b"
    if init == "auto":
        assert lines == [f"{common} --x=1"] * 2
    else:
        assert lines == [f"{common} --coordinator_address=gpu-node01:12345 --num_processes=2 --x=1 "
                         f"--process_id={i}" for i in range(2)]


def test_slurm_outside_a_job_fails(tmp_path):
    result = launch("slurm.sbatch", dry=False, cwd=tmp_path)
    assert result.returncode != 0 and "sbatch" in result.stderr and result.stdout == ""
