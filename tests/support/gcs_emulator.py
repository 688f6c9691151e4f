"""The Cloud Storage emulator the gs:// tests run against (gcp-storage-emulator, in memory), and a client
of its JSON API that checks what landed in a bucket without going through lima_jax.

    python tests/support/gcs_emulator.py start --host=127.0.0.1 --port=PORT --in-memory

runs the emulator with the two things its downloads lack and Cloud Storage has: the object's
`x-goog-generation` header, and a 304 for `ifGenerationNotMatch` on the current generation.
TensorStore (Orbax's array writer) re-reads an OCDBT manifest with that condition now and then while
saving; without them it fails the save with "Malformed StorageGeneration" (gcp-storage-emulator
2026.7.19, tensorstore 0.1.86). Nothing else of the emulator is touched.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus

BUCKET = "bucket"  # the one bucket the tests use


class Emulator:
    """A running emulator's JSON API: buckets, uploads, downloads and listings."""

    def __init__(self, url: str, bucket: str):
        self.url, self.bucket = url, bucket

    def _call(self, path: str, data: bytes | None = None, method: str | None = None,
              kind: str = "application/octet-stream") -> bytes:
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": kind})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def create_bucket(self) -> None:
        self._call("/storage/v1/b?project=test", json.dumps({"name": self.bucket}).encode(), "POST", "application/json")

    def upload(self, name: str, data: bytes) -> None:
        self._call(f"/upload/storage/v1/b/{self.bucket}/o?uploadType=media&name={urllib.parse.quote(name, safe='')}",
                   data, "POST")

    def read(self, name: str) -> bytes:
        return self._call(f"/storage/v1/b/{self.bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media")

    def names(self, prefix: str = "") -> list[str]:
        names, token = [], ""
        while True:
            page = json.loads(self._call(f"/storage/v1/b/{self.bucket}/o?prefix={urllib.parse.quote(prefix)}"
                                         + (f"&pageToken={token}" if token else "")))
            names += [o["name"] for o in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return names


def _serve(args: list[str]) -> int:
    from gcp_storage_emulator import __main__ as emulator
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    download = objects.download

    def download_with_generation(request, response, storage, *rest, **kwargs):
        try:
            generation = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])["generation"]
        except NotFound:
            return download(request, response, storage, *rest, **kwargs)
        if request.query.get("ifGenerationNotMatch", [None])[0] == generation:
            response.status = HTTPStatus.NOT_MODIFIED
            return None
        response["x-goog-generation"] = generation
        return download(request, response, storage, *rest, **kwargs)

    objects.download = download_with_generation  # `objects.get` (alt=media) looks it up here at each call
    return emulator.main(args)


@contextlib.contextmanager
def running(log_path):
    """This script's emulator on a free port of 127.0.0.1 with BUCKET created, its output to `log_path`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "start", "--host=127.0.0.1", f"--port={port}",
                             "--in-memory"], stdout=log, stderr=subprocess.STDOUT)
    emu = Emulator(f"http://127.0.0.1:{port}", BUCKET)
    try:
        deadline = time.time() + 60
        while True:
            try:
                emu.create_bucket()
                break
            except urllib.error.HTTPError:
                raise
            except (urllib.error.URLError, ConnectionError):  # not listening yet
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the emulator did not start: see {log.name}") from None
                time.sleep(0.2)
        yield emu
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
