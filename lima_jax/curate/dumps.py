"""Reading raw dumps as streams: rows of a Stack Exchange XML file (inside its `.7z` or extracted) and
lines of a zstandard-compressed NDJSON file. Memory stays flat however big the file: the XML is parsed
incrementally and every row is freed once read; a `.7z` member is decompressed by py7zr on a thread
into a small bounded queue that the parser drains."""
from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
from typing import Any, Iterator
from xml.etree import ElementTree

from lima_jax.data.records import BadLine, json_object
from lima_jax.errors import LimaError
from lima_jax.storage.paths import Path

_CHUNKS_IN_FLIGHT = 4  # decompressed blocks (py7zr writes up to 128 MB at a time) between the two threads


class _Abandoned(Exception):
    """The reader stopped early: the decompressing thread gives up."""


class _Pipe(io.RawIOBase):
    """The reading end of the queue that py7zr's writer fills: None ends the stream, an exception is
    raised on the reader's side."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: queue.Queue = queue.Queue(maxsize=_CHUNKS_IN_FLIGHT)
        self.abandoned = threading.Event()
        self._chunk = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._chunk and not self._eof:
            item = self.queue.get()
            if item is None:
                self._eof = True
            elif isinstance(item, BaseException):
                raise item
            else:
                self._chunk = memoryview(item)
        n = min(len(buffer), len(self._chunk))
        buffer[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def put(self, item: Any) -> None:
        while not self.abandoned.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Abandoned()


def _writer_factory(pipe: _Pipe):
    import py7zr.io

    class Writer(py7zr.io.Py7zIO):
        def write(self, s: bytes | bytearray) -> int:
            pipe.put(bytes(s))
            return len(s)

        def read(self, size: int | None = None) -> bytes:
            return b""

        def seek(self, offset: int, whence: int = 0) -> int:
            return 0

        def seekable(self) -> bool:  # tells py7zr not to rewind it when the member is done
            return False

        def flush(self) -> None:
            pass

        def size(self) -> int:
            return 0

    class Factory(py7zr.io.WriterFactory):
        def create(self, filename: str) -> Writer:
            return Writer()

    return Factory()


@contextlib.contextmanager
def open_7z_member(archive: str, suffix: str) -> Iterator[io.BufferedReader]:
    """The member of `archive` whose name ends with `suffix` (e.g. "Posts.xml"), as a binary stream
    decompressed while it is read."""
    import py7zr

    f = Path(archive).open("rb")
    try:
        try:
            z = py7zr.SevenZipFile(f, mode="r")
        except (py7zr.Bad7zFile, EOFError) as e:
            raise LimaError(f"{archive}: not a 7z archive ({e})") from None
        names = [n for n in z.getnames() if n == suffix or n.endswith("/" + suffix)]
        if not names:
            raise LimaError(f"{archive}: no {suffix} in the archive")
        pipe = _Pipe()

        def extract() -> None:
            try:
                z.extract(targets=[names[0]], factory=_writer_factory(pipe))
                pipe.put(None)
            except _Abandoned:
                pass
            except BaseException as e:  # noqa: BLE001 - a damaged archive is the reader's error to report
                with contextlib.suppress(_Abandoned):
                    pipe.put(LimaError(f"{archive}: cannot decompress {names[0]} ({type(e).__name__}: {e})"))

        thread = threading.Thread(target=extract, name="7z-reader", daemon=True)
        thread.start()
        try:
            yield io.BufferedReader(pipe, buffer_size=1 << 20)
        finally:
            pipe.abandoned.set()
            thread.join()
            z.close()
    finally:
        f.close()


def xml_rows(stream: io.BufferedIOBase | Any, name: str) -> Iterator[dict[str, str]]:
    """The attributes of each `<row .../>` of a Stack Exchange XML file, one at a time; memory does not
    grow with the file (each row is cleared, and dropped from its parent, once read)."""
    root = None
    try:
        for event, elem in ElementTree.iterparse(stream, events=("start", "end")):
            if event == "start":
                if root is None:
                    root = elem
                continue
            if elem.tag == "row":
                yield dict(elem.attrib)
                elem.clear()
                root.clear()  # the cleared rows would otherwise stay in the root's list of children
    except ElementTree.ParseError as e:
        line, column = e.position
        raise LimaError(f"{name}:{line}: not valid XML ({str(e).split(':')[0]}, column {column})") from None


@contextlib.contextmanager
def site_xml(path: str, table: str = "Posts.xml") -> Iterator[Iterator[dict[str, str]]]:
    """The rows of one of a site's tables (Posts.xml, Comments.xml, ...): `path` is the site's `.7z`,
    a folder holding the table, or the site's Posts.xml (its other tables lie beside it; Stack
    Overflow's are archives of their own: stackoverflow.com-Comments.7z beside -Posts.7z)."""
    p = Path(path)
    if p.is_dir():
        p = p / table
        if not p.is_file():
            raise LimaError(f"{path}: no {table} in this folder")
    elif table != "Posts.xml" and p.name == "Posts.xml":
        p = p.parent / table
    elif table != "Posts.xml" and p.name.endswith("-Posts.7z"):
        p = p.with_name(p.name[: -len("Posts.7z")] + table.replace(".xml", ".7z"))
    if not p.exists():
        raise LimaError(f"{path}: no such file" if p == Path(path) else f"{path}: no {table} beside it ({p})")
    if p.name.endswith(".7z"):
        with open_7z_member(os.fspath(p), table) as stream:
            yield xml_rows(stream, f"{p}:{table}")
    else:
        with p.open("rb") as stream:
            yield xml_rows(stream, os.fspath(p))


def posts_xml(path: str) -> contextlib.AbstractContextManager[Iterator[dict[str, str]]]:
    """The rows of a site's Posts.xml: `path` is the site's `.7z`, a folder holding Posts.xml, or the
    XML file itself."""
    return site_xml(path, "Posts.xml")


ZSTD_WINDOW = 2**31  # Pushshift's dumps are compressed with --long=31: the default window is too small


def ndjson_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each line of a zstandard-compressed NDJSON file (Pushshift's
    `RS_*.zst` / `RC_*.zst` and per-subreddit dumps), decompressed as it is read. A line that is not a
    JSON object is a LimaError naming `file:line`."""
    import zstandard

    p = Path(path)
    if not p.is_file():
        raise LimaError(f"{path}: no such file")
    with p.open("rb") as f:
        reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_WINDOW).stream_reader(f)
        text = io.TextIOWrapper(io.BufferedReader(reader, buffer_size=1 << 20), encoding="utf-8", errors="replace")
        lineno = 0
        try:
            for lineno, line in enumerate(text, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json_object(line)
                except BadLine as e:
                    raise LimaError(f"{path}:{lineno}: {e}") from None
                yield lineno, obj
        except zstandard.ZstdError as e:
            raise LimaError(f"{path}:{lineno + 1}: not zstandard data, or damaged ({e})") from None
