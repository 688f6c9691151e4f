"""One run per workdir: process 0 holds `<workdir>/lock` while it trains.

Two trainers on one workdir (a restarted job beside a zombie) would interleave `metrics.jsonl` and
race for checkpoints. The lock names its holder (host, pid) and is renewed every `RENEW_S` seconds;
a lock is stale, and taken over with a note, when its holder is a dead process on this host or when
it has not been renewed for `STALE_S` seconds (a preempted VM's process, which cannot be asked).
A preempted run that saves and exits releases it; a killed one leaves it to go stale.

Locally the lock file is created with O_EXCL, so two runs starting at once cannot both win. In a
bucket there is no such primitive through gcsfs: the lock is written, then read back after a pause,
and the run that finds another's token gives way.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

import jax

from lima_jax.errors import LimaError, say
from lima_jax.storage.paths import Path, is_cloud, write_atomically

LOCK_FILE = "lock"
RENEW_S = 30.0
STALE_S = 120.0


class WorkdirLock:
    """`with WorkdirLock(workdir):` refuses, in one line on every host, a workdir another live run holds."""

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
