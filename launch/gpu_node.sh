#!/usr/bin/env bash
# One GPU machine for lima_jax: install | run [TRAIN_ARGS...].
# One process; JAX sees all local GPUs (restrict with CUDA_VISIBLE_DEVICES).
#   launch/gpu_node.sh install
#   CONFIG=7b WORKDIR=/data/runs/lima-7b launch/gpu_node.sh run --config.data.manual_dir=/data/lima
# DRY_RUN=1 prints each command (one per line) instead of running it.
set -euo pipefail

PYTHON=${PYTHON:-python}          # the Python of your (virtual) environment
CONFIG=${CONFIG:-65b}
WORKDIR=${WORKDIR:-}              # empty: the config's own workdir
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<USAGE
usage: $(basename "$0") {install|run [TRAIN_ARGS...]}
  install  $PYTHON -m pip install -e ".[gpu]"   (jax[cuda12])
  run      $PYTHON -m lima_jax.train --config=\$CONFIG [--config.workdir=\$WORKDIR] TRAIN_ARGS...
Variables: PYTHON, CONFIG (default 65b), WORKDIR. DRY_RUN=1 prints the commands instead.
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

cmd=${1:-}
shift || true
case "$cmd" in
  install)
    cd "$REPO_ROOT"
    run "$PYTHON" -m pip install -e ".[gpu]"
    ;;
  run)
    cd "$REPO_ROOT"
    train=("$PYTHON" -m lima_jax.train --config="$CONFIG")
    [[ -z $WORKDIR ]] || train+=(--config.workdir="$WORKDIR")
    run "${train[@]}" "$@"
    ;;
  -h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac
