"""Where the tests' inputs are: the repo, and the fixtures that live beside it."""
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures"
LLAMA_TOKENIZER = FIXTURES / "llama_tokenizer" / "tokenizer.model"
STORIES260K = REPO / "examples" / "stories260k" / "stories260K.bin"
SUPPORT = pathlib.Path(__file__).resolve().parent  # the helper scripts tests run as programs


def require(path: pathlib.Path) -> pathlib.Path:
    """Skips the test, with the reason, when a shared fixture is absent."""
    if not path.exists():
        pytest.skip(f"needs {path.name} from ../shared/fixtures beside the repo (not found at {path})")
    return path
