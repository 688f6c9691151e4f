"""Test setup: 8 simulated CPU devices (set before JAX is imported) and the shared fixtures."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
LLAMA_TOKENIZER = FIXTURES / "llama_tokenizer" / "tokenizer.model"
STORIES260K = FIXTURES / "stories260k" / "stories260K.bin"


def require(path: pathlib.Path) -> pathlib.Path:
    """Skips the test, with the reason, when a shared fixture is absent."""
    if not path.exists():
        pytest.skip(f"fixture {path} not found (it lives in ../shared/fixtures beside the repo)")
    return path
