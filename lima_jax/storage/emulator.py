"""Every Cloud Storage client talks to an emulator when `STORAGE_EMULATOR_HOST` is set.

Google's own clients (google-cloud-storage, which TensorBoard's writer uses) and gcsfs (what
etils.epath reads and writes `gs://` with when TensorFlow is absent) read `STORAGE_EMULATOR_HOST`
themselves. TensorStore, which writes Orbax's arrays, reads its own variables, and gcsfs needs two
settings to work against an emulator at all: `use_storage_emulator` derives them at start-up
(lima_jax/__init__.py), before any of these libraries is imported. A value the user set wins.
Imports nothing: every command pays for it.
"""
from __future__ import annotations

import os


def use_storage_emulator() -> bool:
    """Derives the other clients' settings from `STORAGE_EMULATOR_HOST`; returns whether it is set."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if host in ("", "default"):  # "default" is how gcsfs spells "the real service"
        return False
    url = host if "://" in host else f"http://{host}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    # TensorStore sends this as the bearer token instead of looking for credentials; any value will do.
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    # gcsfs: no credentials (it would otherwise try the GCE metadata server before settling on none).
    os.environ.setdefault("FSSPEC_GCS_TOKEN", "anon")
    # gcsfs would ask the Storage Control gRPC API, which emulators lack, for each bucket's layout
    # and wait 60 s for an answer before using plain JSON-API calls anyway.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    return True
