"""The workdir contract: what a run keeps in `<workdir>`, how a rerun proves it is the same run, and
the lock that keeps one run per workdir.

A run writes `config.json` (its resolved config) and `inputs.json` (the hashes of its data and
tokenizer) before anything else, and `dev.jsonl` (the dev conversations it evaluates on); a rerun
resumes only under the same config and inputs. Process 0 holds `<workdir>/lock` while it trains: two
trainers on one workdir (a restarted job beside a zombie) would interleave `metrics.jsonl` and race for
checkpoints. The lock names its holder and is renewed; a dead holder's or a silent one's is taken over
with a note (`WorkdirLock`).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

import jax
import ml_collections

from lima_jax.config import flatten, load_config
from lima_jax.errors import LimaError
from lima_jax.log import say
from lima_jax.storage.paths import Path, check_writable, is_cloud, write_atomically
from lima_jax.train.metrics import DEV_FILE, METRICS_FILE
from lima_jax.weights import checkpoint

CONFIG_FILE = "config.json"
INPUTS_FILE = "inputs.json"  # the hashes of what the run learns from (pipeline.fingerprint)


def read_json(path: Path) -> dict:
    """A JSON object the run wrote earlier; an empty or damaged one is one line naming it."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LimaError(f"{path}: not valid JSON ({e}); restore it or use a new --config.workdir") from None
    if not isinstance(value, dict):
        raise LimaError(f"{path}: not a JSON object; restore it or use a new --config.workdir")
    return value


def check_same_run(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """The resolved config, once a run already in `workdir` (if any) is known to be this one. The
    workdir's own path is no part of a run's identity (a moved run resumes), and neither is how often
    it logs or saves, except that lowering `checkpoint.max_to_keep` may not delete steps it kept. A run
    that never saved a step has nothing to resume: another config starts it over (a first attempt
    that failed before its first checkpoint, e.g. on a dtype the backend cannot run)."""
    path = workdir / CONFIG_FILE
    resolved = json.loads(config.to_json_best_effort())
    if not path.exists():
        _check_no_run_files(workdir)
        return resolved
    previous = read_json(path)
    changed = _changed_key(previous, resolved, config.name)
    if changed and not _checkpoint_steps(workdir):
        say(f"workdir {workdir} holds a run that never saved a step, with another config (key {changed}): "
            "starting it over with this one")
    elif changed:
        raise LimaError(f"workdir {workdir} holds a run with a different config (key {changed}); use a new --config.workdir")
    else:
        _check_kept_steps(previous.get("checkpoint", {}).get("max_to_keep", 0), config.checkpoint.max_to_keep, workdir)
    return resolved


def _changed_key(before: dict, now: dict, name: str) -> str | None:
    """The first key on which two resolved configs differ as runs (logging, saving and the workdir aside)."""
    # log_every: a key that set nothing, in the config.json of runs begun before it was removed
    ignore = ("log_every", "log", "checkpoint", "workdir")
    before, now = flatten(before), flatten(now)
    defaults = _recipe_defaults(name)
    for key in sorted(set(before) | set(now)):
        if key.split(".")[0] in ignore:
            continue
        # A key the recipe gained after the run began was at its default then.
        was = before.get(key, defaults.get(key, before.get(key)))
        if was != now.get(key) or (key not in before and key not in defaults):
            return key
    return None


def _check_no_run_files(workdir: Path) -> None:
    """A run writes config.json before anything else, so run files without it are not this run's:
    checkpoints would be resumed under any config, and metrics.jsonl and dev.jsonl rewritten. They
    are refused, never resumed or replaced."""
    found = [name for name in (INPUTS_FILE, METRICS_FILE, DEV_FILE) if (workdir / name).exists()]
    steps = _checkpoint_steps(workdir)
    if steps:
        found.append(f"{len(steps)} checkpoint step{'s' * (len(steps) > 1)} (the last {steps[-1]})")
    if found:
        raise LimaError(
            f"workdir {workdir} holds {', '.join(found)} but no {CONFIG_FILE}, so nothing shows they are this run's; "
            f"restore its {CONFIG_FILE} or use a new --config.workdir"
        )


def _checkpoint_steps(workdir: Path) -> list[int]:
    steps_dir = workdir / checkpoint.STEPS_DIR
    return sorted(int(p.name) for p in steps_dir.iterdir() if p.name.isdigit()) if steps_dir.is_dir() else []


def _recipe_defaults(name: str) -> dict:
    """The named config's values as it is today, flattened; empty if it cannot be loaded by name."""
    try:
        return flatten(json.loads(load_config(name).to_json_best_effort()))
    except (LimaError, OSError, ValueError):
        return {}


def _check_kept_steps(before: int, now: int, workdir: Path) -> None:
    """Orbax deletes the oldest steps beyond `max_to_keep` at the next save: a resume that lowers it
    would silently delete the epoch checkpoints LIMA chooses among."""
    steps_dir = workdir / checkpoint.STEPS_DIR
    steps = _checkpoint_steps(workdir)
    if now and (before == 0 or now < before) and len(steps) > now:
        kept = "every step" if before == 0 else f"{before} steps"
        raise LimaError(
            f"config key checkpoint.max_to_keep: {now} would delete {len(steps) - now} of the {len(steps)} steps in "
            f"{steps_dir} (steps {', '.join(map(str, steps[:len(steps) - now]))}); the run kept {kept}: resume with "
            f"--config.checkpoint.max_to_keep={before}, or move those steps elsewhere first"
        )


def check_same_inputs(fingerprint: dict[str, str], workdir: Path) -> None:
    """A run resumes only on the data and tokenizer it began with: edited data would change the step
    count and the dev split under it."""
    path = workdir / INPUTS_FILE
    if not path.exists() or not _checkpoint_steps(workdir):  # nothing saved: nothing to resume on them
        return
    previous = read_json(path)
    for key, what in (("train", "training conversations"), ("dev", "dev conversations"), ("tokenizer", "tokenizer")):
        if key in previous and previous[key] != fingerprint[key]:
            raise LimaError(
                f"workdir {workdir} holds a run begun on other {what} (sha256 {previous[key][:12]}, now "
                f"{fingerprint[key][:12]}; {path}); restore them or use a new --config.workdir"
            )


def write_run_files(resolved: dict, fingerprint: dict[str, str], workdir: Path) -> None:
    """Saves the resolved config (`check_same_run`'s) and the inputs' hashes; a workdir holding a run
    begun on other inputs is refused, not overwritten."""
    check_same_inputs(fingerprint, workdir)
    if jax.process_index() == 0:  # a kill while they are rewritten leaves the old files, never empty ones
        workdir.mkdir(parents=True, exist_ok=True)
        write_atomically(workdir / CONFIG_FILE, json.dumps(resolved, indent=2, sort_keys=True))
        write_atomically(workdir / INPUTS_FILE, json.dumps(fingerprint, indent=2, sort_keys=True))


def write_dev_set(records: list, workdir: Path) -> None:
    """The dev conversations this run evaluates on, as `<workdir>/dev.jsonl` (LIMA's format): what
    checkpoint selection and generation read, instead of rebuilding the split."""
    if jax.process_index() == 0:
        write_atomically(workdir / DEV_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))



def check_workdir(workdir: Path) -> None:
    """The workdir can be written, creating nothing: locally the nearest folder that exists accepts
    new files; in a bucket, a marker is written and deleted (the only way to know)."""
    if is_cloud(workdir):
        check_writable(workdir, "config key workdir:")
        return
    if workdir.exists() and not workdir.is_dir():
        raise LimaError(f"config key workdir: {workdir} is a file, not a directory")
    existing = next(p for p in (workdir, *workdir.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LimaError(f"config key workdir: {workdir} cannot be created ({existing} is not writable)")



LOCK_FILE = "lock"
RENEW_S = 30.0
STALE_S = 120.0


class WorkdirLock:
    """`with WorkdirLock(workdir):` refuses, in one line on every host, a workdir another live run holds.

    The lock names its holder (host, pid) and is renewed every `renew_s` seconds; it is stale, and taken
    over with a note, when its holder is a dead process on this host or has not renewed it for `stale_s`
    seconds (a preempted VM's process cannot be asked). Locally it is created with O_EXCL; in a bucket
    (no such primitive through gcsfs) it is written, read back after a pause, and the run that finds
    another's token gives way."""

    def __init__(self, workdir: Path, *, renew_s: float = RENEW_S, stale_s: float = STALE_S) -> None:
        self.path = workdir / LOCK_FILE
        self.renew_s, self.stale_s = renew_s, stale_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> "WorkdirLock":
        refusal = None
        if jax.process_index() == 0:
            try:
                self._acquire()
            except LimaError as e:
                refusal = str(e)
        if jax.process_count() > 1:  # every host stops, not only process 0
            import numpy as np
            from jax.experimental import multihost_utils

            if multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)) and refusal is None:
                refusal = f"workdir {self.path.parent} is in use by another run (process 0's log names it)"
        if refusal:
            raise LimaError(refusal)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            if self._holder().get("token") == self.token:
                self.path.unlink(missing_ok=True)

    def _record(self) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "renewed": time.time()})

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}  # gone, or half-written by a run killed while renewing: nobody's

    def _acquire(self) -> None:
        if self.path.exists():
            holder = self._holder()
            why_stale = self._stale(holder)
            if why_stale is None:
                raise LimaError(
                    f"workdir {self.path.parent} is in use by pid {holder['pid']} on {holder['host']} (its lock {self.path} "
                    f"was renewed {time.time() - holder['renewed']:.0f} s ago); stop that run first, or wait "
                    f"{self.stale_s:.0f} s after it died"
                )
            say(f"note: taking over {self.path} ({why_stale})")
            self.path.unlink(missing_ok=True)
        if is_cloud(self.path):
            self.path.write_text(self._record())
            time.sleep(2.0)  # a run that wrote at the same moment has overwritten ours by now, or we its
        else:
            try:
                fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                fd = None
            if fd is not None:
                with os.fdopen(fd, "w") as f:
                    f.write(self._record())
        holder = self._holder()
        if holder.get("token") != self.token:
            raise LimaError(f"workdir {self.path.parent}: another run took its lock {self.path} at the same moment; stop one")
        self._renewer = threading.Thread(target=self._renew, name="lima_jax workdir lock", daemon=True)
        self._renewer.start()

    def _stale(self, holder: dict) -> str | None:
        """Why the lock `holder` describes is stale, or None while its run may be alive."""
        if not {"host", "pid", "renewed"} <= set(holder):
            return "it is empty or damaged"
        if holder["host"] == socket.gethostname() and not _alive(holder["pid"]):
            return f"pid {holder['pid']} on this host has exited"
        age = time.time() - holder["renewed"]
        if age > self.stale_s:
            return f"not renewed for {age:.0f} s"
        return None

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                write_atomically(self.path, self._record())
            except OSError as e:  # a transient storage error: the next renewal may succeed
                say(f"warning: could not renew {self.path} ({e})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
