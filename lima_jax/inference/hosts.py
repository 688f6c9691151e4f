"""Several processes, one result: what commands that run on every host of a slice share.

Every process runs the same command over one global mesh; process 0 alone writes files and stdout
("process 0 talks"), and decides what a resumable run still has to do, then tells the others, so
that no host reads a file another host is writing (on a pod each host may not even see it).

Imports no JAX: a command that never loaded JAX is one process, and every function here is then
trivial (and so is it under JAX with one process).
"""
from __future__ import annotations

import hashlib
import json
import sys
from typing import Any, Callable, TypeVar

from lima_jax.errors import LimaError

T = TypeVar("T")


def _jax():
    return sys.modules.get("jax")


def process_count() -> int:
    jax = _jax()
    return 1 if jax is None else jax.process_count()


def is_writer() -> bool:
    """Whether this process writes the command's files and stdout: process 0, the one of one."""
    jax = _jax()
    return jax is None or jax.process_index() == 0


def from_process_0(compute: Callable[[], T]) -> T:
    """`compute()` run on process 0 alone, its (JSON-able) result handed to every process. An error
    there is raised on every process (a LimaError with process 0's message elsewhere), so that none
    waits for a peer that has stopped."""
    if process_count() == 1:
        return compute()
    import numpy as np
    from jax.experimental import multihost_utils

    failure = None
    if is_writer():
        try:
            payload = {"value": compute()}
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others have heard of it
            failure = e
            message = str(e) if isinstance(e, LimaError) else f"{type(e).__name__}: {e}"
            payload = {"error": f"process 0: {message}"}
        blob = np.frombuffer(json.dumps(payload).encode("utf-8"), np.uint8)
    else:
        blob = np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(blob.size)))
    if not is_writer():
        blob = np.zeros(size, np.uint8)
    payload = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(blob))).decode("utf-8"))
    if failure is not None:
        raise failure
    if "error" in payload:
        raise LimaError(payload["error"])
    return payload["value"]


def check_same(what: str, value: Any) -> None:
    """Every process holds the same (JSON-able) `value`, else a LimaError on every process naming
    `what` and the first process that differs from process 0."""
    if process_count() == 1:
        return
    import numpy as np
    from jax.experimental import multihost_utils

    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).digest()
    seen = np.asarray(multihost_utils.process_allgather(np.frombuffer(digest, np.uint32)))
    differ = [i for i in range(len(seen)) if not (seen[i] == seen[0]).all()]
    if differ:
        raise LimaError(f"{what} differ between processes: process {differ[0]} has other ones than process 0 "
                        "(every host must read the same files)")
