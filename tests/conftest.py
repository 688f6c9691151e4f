"""Test setup: 8 simulated CPU devices (set before JAX is imported) and the fixtures.

stories260K ships in the repo (examples/); the LLaMA tokenizer is not ours to ship and is read from
../shared/fixtures beside the repo: tests that need it skip without it, and say why in the run's
short summary (pytest.ini asks for skip reasons)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
LLAMA_TOKENIZER = FIXTURES / "llama_tokenizer" / "tokenizer.model"
STORIES260K = REPO / "examples" / "stories260k" / "stories260K.bin"


def require(path: pathlib.Path) -> pathlib.Path:
    """Skips the test, with the reason, when a shared fixture is absent."""
    if not path.exists():
        pytest.skip(f"needs {path.name} from ../shared/fixtures beside the repo (not found at {path})")
    return path
