#!/usr/bin/env bash
# Cloud TPU VM pod slice for lima_jax: create | install | run | logs | stop | delete.
# Run it on your workstation (it needs gcloud). `run` starts the same training command on every
# worker; on TPU VMs jax.distributed.initialize() needs no arguments.
#   TPU_NAME=lima ZONE=us-central2-b ACCELERATOR=v4-128 launch/tpu_vm.sh create
#   WORKDIR=gs://my-bucket/lima-65b launch/tpu_vm.sh run --config.data.manual_dir=gs://my-bucket/lima
# DRY_RUN=1 prints each command (one per line) instead of running it. `check` (or CHECK=1 with
# `create`) compiles the exact training step for ACCELERATOR here, before the slice is paid for.
set -euo pipefail

TPU_NAME=${TPU_NAME:-lima-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-128}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
PROJECT=${PROJECT:-}              # empty: gcloud's default project
REPO_URL=${REPO_URL:-}            # git URL to clone on the workers; empty: copy this checkout
CONFIG=${CONFIG:-65b}
WORKDIR=${WORKDIR:-}              # gs:// path every worker can reach (required by `run`)
PYTHON_VERSION=${PYTHON_VERSION:-3.11}   # flax/orbax need >= 3.11; Ubuntu 22.04 ships 3.10
REMOTE_DIR=${REMOTE_DIR:-lima_jax}       # on each worker, under ~
VENV=${VENV:-lima_venv}                  # on each worker, under ~
LOG=${LOG:-lima_jax_train.log}           # on each worker, under ~ (one log per worker)
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<USAGE
usage: $(basename "$0") {check [TRAIN_ARGS...]|create [TRAIN_ARGS...]|install|run [TRAIN_ARGS...]|logs|stop|delete}
  check    on this machine: python -m lima_jax.train --dry_run --topology=\$ACCELERATOR with the run's
           config and TRAIN_ARGS: checks data, tokenizer, init checkpoint, workdir; compiles the step
  create   create the TPU VM slice (TPU_NAME, ZONE, ACCELERATOR, RUNTIME_VERSION, PROJECT);
           with CHECK=1, runs check (with TRAIN_ARGS) first and creates nothing if it fails
  install  on all workers: Python $PYTHON_VERSION venv, the repo (REPO_URL or a copy), pip install -e '.[tpu]'
  run      on all workers, in the background: python -m lima_jax.train --config=\$CONFIG
           --config.workdir=\$WORKDIR TRAIN_ARGS...; log in ~/$LOG on each worker
  logs     follow worker 0's log
  stop     kill the training processes on all workers
  delete   delete the TPU VM slice
Set DRY_RUN=1 to print the commands instead of running them.
USAGE
}

# Prints a command the way a shell would read it back, quoting only where needed
# (for --flag=value, only the value).
show() {
  local a out=() safe='^[A-Za-z0-9_./:=@%+,-]*$'
  for a in "$@"; do
    if [[ $a =~ $safe ]]; then out+=("$a")
    elif [[ $a =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
      out+=("${BASH_REMATCH[1]}'${BASH_REMATCH[2]//\'/\'\\\'\'}'")
    else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
run() { if [[ ${DRY_RUN:-0} == 1 ]]; then show "$@"; else "$@"; fi; }

tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"})
on_all() { run "${tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"; }

# The training job checked and compiled for the slice on this machine (needs lima_jax and libtpu here).
check() {
  run "${PYTHON:-python}" -m lima_jax.train --config="$CONFIG" ${WORKDIR:+--config.workdir="$WORKDIR"} \
    --dry_run --topology="$ACCELERATOR" "$@"
}

cmd=${1:-}
shift || true
case "$cmd" in
  check)
    check "$@"
    ;;
  create)
    if [[ ${CHECK:-0} == 1 ]]; then check "$@"; fi
    run "${tpu[@]}" create "$TPU_NAME" "${where[@]}" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME_VERSION"
    ;;
  install)
    # A venv with a new enough Python (the apt lock may be held by unattended-upgrades at boot).
    apt="sudo apt-get -o DPkg::Lock::Timeout=600 -qq"
    on_all "$apt update && $apt install -y python$PYTHON_VERSION-venv \
&& python$PYTHON_VERSION -m venv ~/$VENV && ~/$VENV/bin/pip install -q -U pip"
    if [[ -n $REPO_URL ]]; then
      fetch="if [ -d ~/$REMOTE_DIR/.git ]; then git -C ~/$REMOTE_DIR pull --ff-only; \
else git clone $(printf %q "$REPO_URL") ~/$REMOTE_DIR; fi"
    else
      # Copy this checkout (uncommitted edits included) as a tarball to every worker.
      tarball=${TMPDIR:-/tmp}/lima_jax_src.tar.gz
      run tar -czf "$tarball" --exclude=.git --exclude=__pycache__ --exclude='*.egg-info' \
        --exclude=.venv -C "$REPO_ROOT" .
      run "${tpu[@]}" scp "$tarball" "$TPU_NAME:lima_jax_src.tar.gz" "${where[@]}" --worker=all
      fetch="mkdir -p ~/$REMOTE_DIR && tar -xzf ~/lima_jax_src.tar.gz -C ~/$REMOTE_DIR"
    fi
    on_all "$fetch && cd ~/$REMOTE_DIR && ~/$VENV/bin/pip install -e \".[tpu]\""
    ;;
  run)
    [[ -n $WORKDIR ]] || { echo "error: set WORKDIR (a gs:// path all workers share)" >&2; exit 2; }
    # Quote CONFIG, WORKDIR and the extra args for the workers' shell; ~ expands there.
    # shellcheck disable=SC2088
    train="~/$VENV/bin/python -m lima_jax.train $(printf '%q ' --config="$CONFIG" \
      --config.workdir="$WORKDIR" "$@")"
    on_all "cd ~/$REMOTE_DIR && nohup $train> ~/$LOG 2>&1 < /dev/null &"
    ;;
  logs)
    run "${tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=0 --command="tail -n 200 -f ~/$LOG"
    ;;
  stop)
    # [l] keeps pkill from matching the remote shell whose command line holds this pattern.
    on_all "pkill -f \"[l]ima_jax.train\" || true"
    ;;
  delete)
    run "${tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
    ;;
  -h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac
