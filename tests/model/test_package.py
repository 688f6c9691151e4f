"""The model package stands alone: it imports no stage (lazy imports included), and its config loads
and validates without JAX, as configs and `--help` need."""
import ast
import os
import subprocess
import sys

import pytest

from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig
from support.paths import REPO

MODEL = REPO / "lima_jax" / "model"
BELOW = ("lima_jax.errors", "lima_jax.sharding")  # what the model layer may import besides itself


def imported_modules(path) -> set[str]:
    """Every lima_jax module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] == "lima_jax"}


def test_the_model_imports_nothing_but_itself_errors_and_sharding():
    files = sorted(MODEL.glob("*.py"))
    assert len(files) >= 8, files
    stray = {f"{path.name}: {name}" for path in files for name in imported_modules(path)
             if not (name.startswith("lima_jax.model.") or name in BELOW)}
    assert not stray, sorted(stray)


def test_the_model_config_loads_and_validates_without_jax():
    code = ("import sys\n"
            "from lima_jax.model import ModelConfig, param_count\n"
            "import lima_jax.config\n"
            "ModelConfig().validate()\n"
            "print(param_count(ModelConfig()), sorted(m for m in ('jax', 'flax') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["6738415616", "[]"]  # LLaMA-7B's parameter count, and no JAX loaded


@pytest.mark.parametrize("change, line", [
    ({"dim": 0}, "config key model.dim: must be positive, got 0"),
    ({"num_kv_heads": 3}, "config key model.num_kv_heads: 3 does not divide model.num_heads=32"),
    ({"head_dim": 7, "num_heads": 4, "num_kv_heads": 4}, "config key model.head_dim: rotary embeddings need an even head dim"),
    ({"attention": "flash"}, "config key model.attention: must be one of auto, xla, splash, cudnn, got 'flash'"),
    ({"attention": "cudnn"}, "config key model.attention: needs model.dtype in bfloat16, float16"),
    ({"family": "gpt2"}, "config key model.family: must be one of llama, mistral, qwen2, got 'gpt2'"),
])
def test_a_bad_model_config_value_is_one_line_naming_its_key(change, line):
    with pytest.raises(LimaError) as error:
        ModelConfig().replace(**change).validate()
    assert str(error.value).startswith(line) and "\n" not in str(error.value)


def test_the_attention_kernels_limits_are_checked_at_the_training_length():
    cfg = ModelConfig(dim=1024, num_heads=8, num_kv_heads=8, attention="splash", max_len=2048)  # head dim 128
    cfg.validate()
    with pytest.raises(LimaError, match=r"^config key model.attention: needs .* multiples of 128, got 100 and 128$"):
        cfg.validate(seq_len=100)
