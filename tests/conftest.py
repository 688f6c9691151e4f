"""Test setup: 8 simulated CPU devices and fast-compiling XLA flags (set before JAX is imported), one
compilation cache for the session, and the fixtures.

The compilation cache: every process the session starts (the tests' own `python -m lima_jax.*`
commands included, through the environment) reads and writes one JAX persistent cache in a fresh
temporary folder, so the tiny programs compile once per session, not once per process; a cache
from an earlier session (or the user's own) can never make a test pass. pytest-xdist workers share
their controller's folder.

Helpers live in support/ (support.paths says where the shared fixtures are: stories260K ships in the
repo, the LLaMA tokenizer is read from ../shared/fixtures beside it, and tests that need it skip
without it, saying why in the run's short summary)."""
import os
import shutil
import tempfile

# LLVM at -O0 for the suite's many small XLA programs: the same HLO, about half the compile time (the tiny
# train step 3.1 CPU s instead of 6.2, its init 1.1 instead of 4.3), which is most of what the suite spends;
# the steps run 2-3x slower (118 ms instead of 44) and round differently in the last bits, so the runs a user
# makes as a user would (the README's 722-step run, the device check: support.commands.USER_ENVIRONMENT) keep
# XLA's default. (XLA's older fusion emitters, --xla_cpu_use_fusion_emitters=false, compile faster still, but
# libtpu aborts on that flag and the remat policies' gradients then differ by more than the tests allow.)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OWN_CACHE = "PYTEST_XDIST_WORKER" not in os.environ  # a worker uses its controller's
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lima_jax_tests_compilation_cache_")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the tiny programs compile in well under 1 s

import importlib.util  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

TESTS = pathlib.Path(__file__).resolve().parent
# The modules that take longest, in that order (their tests' CPU seconds, measured test by test): started
# first, so that the last module a worker takes is a short one and the workers end together.
LONGEST_FIRST = (
    "train/test_faults.py",         # kills, signals, a full disk
    "train/test_train_hosts.py",    # multi-process runs
    "model/test_model.py",
    "train/test_train.py",
    "train/test_dry_run.py",        # the 65B step compiled for v4-128
    "inference/test_sampling.py",
    "lora/test_lora.py",
    "commands/test_readme_run.py",  # one test: the README's 722-step run
    "storage/test_gcs.py",
    "inference/test_dtype.py",
    "inference/test_sample_hosts.py",
    "bench/test_device_check.py",   # the device check's CPU subset: every part compiles its own programs
    "bench/test_bench.py",
    "commands/test_compile_cache.py",
    "serve/test_serve.py",
    "commands/test_select.py",
    "weights/test_export_chat.py",
)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """An in-memory Cloud Storage emulator on 127.0.0.1 with one bucket (support.gcs_emulator.BUCKET)."""
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        pytest.skip("needs the Cloud Storage emulator: pip install gcp-storage-emulator (the test extra)")
    from support.gcs_emulator import running

    with running(tmp_path_factory.mktemp("emulator") / "log.txt") as emu:
        yield emu


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """A finished SMALL run's workdir (support.training: the tiny model, one epoch of the demo, 64-token
    rows), trained once for the tests that read a run; a test that writes to a run copies it first."""
    from support.training import small_config

    from lima_jax.train.loop import train

    folder = tmp_path_factory.mktemp("small_run")
    train(small_config(folder))
    return folder / "run"


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """A random 'pretrained' model with the tiny architecture and the demo tokenizer's 512 pieces (no EOT
    yet), converted from transformers as `convert` does: a base to fine-tune (in full or with LoRA)."""
    from support.hf_reference import random_hf_model

    from lima_jax.config import load_config, model_config
    from lima_jax.data import demo_dir
    from lima_jax.weights.convert import convert

    root = tmp_path_factory.mktemp("pretrained")
    random_hf_model(model_config(load_config("tiny"))).save_pretrained(root / "hf")
    return convert(root / "hf", root / "ckpt", tokenizer=demo_dir() / "tokenizer.model")


@pytest.fixture(scope="session")
def lora_run(pretrained, tmp_path_factory):
    """A finished SMALL LoRA run's workdir: rank 4 on every projection of `pretrained`, LIMA's new EOT (id
    512) added to its 512 pieces and trained with the adapters (tests/lora, tests/weights' exports)."""
    from support.training import small_config

    from lima_jax.data import demo_dir
    from lima_jax.train.loop import train

    config = small_config(tmp_path_factory.mktemp("lora"), init_checkpoint=str(pretrained),
                          **{"data.tokenizer": str(demo_dir() / "tokenizer.model"), "lora.rank": 4})
    train(config)
    return config.workdir


@pytest.fixture
def no_compilation_cache():
    """The session's persistent cache off for one test: one that times compiles must compile, not load."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_enable_compilation_cache", True)
    compilation_cache.reset_cache()


def pytest_collection_modifyitems(config, items):
    """The longest modules first (the rest keep their order); tests/commands/ carries the `commands` marker."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    module = {item: os.path.relpath(item.path, TESTS).replace(os.sep, "/") for item in items}
    items.sort(key=lambda item: rank.get(module[item], len(rank)))
    for item in items:
        if module[item].startswith("commands/"):
            item.add_marker(pytest.mark.commands)


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4 (each holds 8 simulated devices and a few GB)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))
