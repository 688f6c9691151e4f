"""One path type for every path a user names: a local path or a `gs://` one, through `etils.epath`.

`pathlib.Path("gs://bucket/run").absolute()` is `<cwd>/gs:/bucket/run`, a local folder; an epath
path keeps the URI and reads and writes it through gcsfs (or TensorFlow's gfile, when installed),
and Orbax takes it as is. What differs between the two kinds is kept here: a cloud object is
replaced whole by each upload (so it needs no rename to appear atomically) and cannot be appended
to (gcsfs would silently overwrite it instead).
"""
from __future__ import annotations

import math
import os
import re
import time

from etils import epath

from lima_jax.errors import LimaError

Path = epath.Path
PathLike = str | os.PathLike

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_cloud(path: PathLike) -> bool:
    """Whether `path` is a URI (`gs://bucket/...`) rather than a local path."""
    return bool(_URI.match(os.fspath(path)))


def user_path(path: PathLike) -> Path:
    """A path the user named: a local one made absolute against the working directory (`~`
    expanded), a `gs://` one as it is."""
    p = epath.Path(path)
    return p if is_cloud(p) else p.expanduser().absolute()


def check_writable(directory: PathLike, what: str) -> None:
    """Creates `directory` and writes and deletes a marker file in it, so that a file in its place,
    a missing bucket, missing credentials or a denied write is one line naming the path before any
    compiling, not a traceback at the first checkpoint."""
    directory = epath.Path(directory)
    marker = directory / f".lima_jax-write-check-{os.getpid()}"
    try:
        is_file = directory.is_file()
        if not is_file:
            directory.mkdir(parents=True, exist_ok=True)
            marker.write_bytes(b"")
            marker.unlink()
    except Exception as e:  # noqa: BLE001 - the OS, gcsfs and aiohttp raise many types: all mean "cannot write"
        raise LimaError(f"{what} {directory}: cannot write there ({_reason(e, directory)})") from None
    if is_file:
        raise LimaError(f"{what} {directory} is a file, not a directory")


def _reason(error: Exception, path: Path) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if is_cloud(path):
        bucket = os.fspath(path).split("://", 1)[1].split("/", 1)[0]
        if isinstance(error, FileNotFoundError):  # gcsfs: a 404 on an upload means no such bucket
            return f"no bucket {bucket}, or no access to it"
        if first.startswith("Forbidden"):  # gcsfs: a 403, with the service's reason on the next line
            return "permission denied" + (f": {text.splitlines()[1]}" if len(text.splitlines()) > 1 else "")
    if isinstance(error, PermissionError):
        return "permission denied"
    return first


def write_atomically(path: PathLike, text: str) -> None:
    """Writes `text` so that a reader never sees half of it: locally beside the target and renamed
    into place; a cloud upload already replaces the object at once."""
    path = epath.Path(path)
    if is_cloud(path):
        path.write_text(text, encoding="utf-8")
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def copy_file(src: PathLike, dst: PathLike) -> None:
    """Copies a small file between any two places (epath's own `copy` works within one backend only)."""
    epath.Path(dst).write_bytes(epath.Path(src).read_bytes())


class Appender:
    """Text appended to a file; `flush` makes what was written visible to readers.

    Locally, a file opened for appending. A cloud object cannot be appended to, so its text is kept
    here and the whole object uploaded again on `flush`: each upload replaces the object at once, so
    a reader sees whole lines only. `min_interval_s` spaces those uploads (Cloud Storage takes about
    one write per second to an object); `flush(force=True)` and `close` upload regardless.
    """

    def __init__(self, path: PathLike, *, min_interval_s: float = 0.0):
        self.path = epath.Path(path)
        self._cloud = is_cloud(self.path)
        if self._cloud:
            self._parts = [self.path.read_text(encoding="utf-8")] if self.path.exists() else []
            self._unsent = False
            self._min_interval_s = min_interval_s
            self._sent_at = -math.inf
        else:
            self._file = open(self.path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        if self._cloud:
            self._parts.append(text)
            self._unsent = True
        else:
            self._file.write(text)

    def flush(self, force: bool = False) -> None:
        if not self._cloud:
            self._file.flush()
        elif self._unsent and (force or time.monotonic() - self._sent_at >= self._min_interval_s):
            self._parts = ["".join(self._parts)]
            self.path.write_text(self._parts[0], encoding="utf-8")
            self._unsent, self._sent_at = False, time.monotonic()

    def close(self) -> None:
        if self._cloud:
            self.flush(force=True)
        else:
            self._file.close()

    def __enter__(self) -> "Appender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
