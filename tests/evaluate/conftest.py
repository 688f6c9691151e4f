"""The evaluation tests' shared model: a tiny "fine-tuned" checkpoint (the demo tokenizer's 512 pieces + EOT)
with a context long enough for the judges' prompts."""
import pytest

from support.models import converted_checkpoint


@pytest.fixture(scope="session")
def judge_ckpt(tmp_path_factory):
    return converted_checkpoint(tmp_path_factory.mktemp("judge"), 513, max_len=2048)
