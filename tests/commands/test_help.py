"""`--help` of every command: every flag the command takes, exit 0, and nothing heavy imported (so it
answers in well under a second); bad input is one line before JAX is imported, not after it loads.

Each case is its own `python -X importtime -m lima_jax.X` process, run a few at a time: the import
list, not a stopwatch, says that nothing heavy was loaded (timings on a loaded host would race)."""
import ast
import concurrent.futures
import re
import subprocess

from support.commands import command_line
from support.paths import REPO

HEAVY = ("jax", "flax", "orbax", "optax", "tensorflow", "tensorflow_datasets", "torch", "transformers")
# Every `python -m lima_jax.X`: a module that ends by calling `run(main)`.
COMMANDS = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__main__")
    for p in (REPO / "lima_jax").rglob("*.py")
    if re.search(r'^if __name__ == "__main__":\n    run\(main\)', p.read_text(), re.M)
)
# The flags of shared groups (cli's sampling flags, config's --config) that absl's --help used to leave out.
NAMED = {"lima_jax.sample": {"checkpoint", "temperature", "top_p", "max_new_tokens", "seed", "verbose"},
         "lima_jax.chat": {"checkpoint", "temperature", "top_p", "max_new_tokens", "seed"},
         "lima_jax.train": {"config", "dry_run", "coordinator_address"}}


def _run_all(argvs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Each argv run with `-X importtime`, four at a time."""
    def one(argv: list[str]) -> subprocess.CompletedProcess:
        python, *rest = command_line(*argv)
        return subprocess.run([python, "-X", "importtime", *rest], cwd=REPO, capture_output=True, text=True, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, argvs))


def _heavy_imports(result: subprocess.CompletedProcess) -> set[str]:
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "lima_jax.cli" in imported, result.stderr[-2000:]  # the measurement sees our imports
    return {m for m in imported if m in HEAVY}


def _errors(result: subprocess.CompletedProcess) -> str:
    """stderr without the import timings."""
    return "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))


def _flags(text: str) -> set[str]:
    return set(re.findall(r"^\s+(?:-\S,)?--(?:\[no\])?([\w.]+):", text, re.M))


def _lima_jax_flags(helpfull: str) -> set[str]:
    """The flags --helpfull lists under lima_jax's own modules (not absl's or a library's)."""
    sections = re.split(r"^(\S.*):$", helpfull, flags=re.M)  # [before, header, body, header, body, ...]
    return {flag for header, body in zip(sections[1::2], sections[2::2]) if "lima_jax" in header for flag in _flags(body)}


def _example_lines(module: str) -> list[str]:
    """The docstring's `python -m ...` lines as written in the source (a trailing `\\` included)."""
    path = REPO / (module.replace(".", "/") + ".py")
    path = path if path.exists() else path.with_suffix("") / "__main__.py"
    source = path.read_text()
    docstring = ast.parse(source).body[0]
    raw = source.splitlines()[docstring.lineno - 1 : docstring.end_lineno]
    return [line.strip() for line in raw if line.strip().startswith("python -m ")]


def test_every_command_has_help_that_lists_all_its_flags_exits_0_and_imports_nothing_heavy():
    assert len(COMMANDS) >= 17 and "lima_jax.train" in COMMANDS and "lima_jax.evaluate.select" in COMMANDS, COMMANDS
    results = _run_all([[m, "--help"] for m in COMMANDS] + [[m, "--helpfull"] for m in COMMANDS])
    problems = []
    for module, short, full in zip(COMMANDS, results, results[len(COMMANDS):]):
        listed = _flags(short.stdout)
        wanted = _lima_jax_flags(full.stdout) | NAMED.get(module, set())
        if short.returncode != 0 or full.returncode != 0:
            problems.append(f"{module}: --help exits {short.returncode}, --helpfull {full.returncode}: {_errors(short)[-300:]}")
        if not wanted or wanted - listed:
            problems.append(f"{module}: --help leaves out {sorted(wanted - listed) or 'everything'}")
        if _heavy_imports(short):
            problems.append(f"{module}: --help imports {sorted(_heavy_imports(short))}")
        if missing := [line for line in _example_lines(module) if line not in short.stdout]:
            problems.append(f"{module}: --help garbles the example {missing}")
    assert not problems, "\n".join(problems)


def test_a_missing_input_or_an_unknown_config_key_is_one_line_before_jax_is_imported(tmp_path):
    missing = tmp_path / "no-such-run"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"conversations": ["What is 3 plus 4?"]}\n')
    cases = {
        ("sample", f"--checkpoint={missing}", "--prompt=hi"): f"error: checkpoint {missing}: no such file or directory",
        ("chat", f"--checkpoint={missing}"): f"error: checkpoint {missing}: no such file or directory",
        ("evaluate.generate", f"--checkpoint={missing}", f"--prompts={prompts}", f"--output={tmp_path / 'out.jsonl'}"):
            f"error: checkpoint {missing}: no such file or directory",
        ("convert", f"--input={missing}", f"--output={tmp_path / 'out'}"): f"error: --input {missing}: no such file or directory",
        ("evaluate.select", f"--workdir={missing}", f"--out_dir={tmp_path / 'select'}"):
            f"error: --workdir {missing}: no such file or directory",
        ("train", "--config=tiny", "--config.optim.no_such_key=1"):
            "error: --config.optim.no_such_key: unknown config key 'no_such_key' in optim",
    }
    for (module, *_), result, line in zip(cases, _run_all([list(c) for c in cases]), cases.values()):
        assert result.returncode == 2, (module, _errors(result)[-2000:])
        last = _errors(result).strip().splitlines()[-1]
        assert last.startswith(line), (module, last)
        assert not _heavy_imports(result), (module, sorted(_heavy_imports(result)))


def test_help_into_a_reader_that_stops_early_still_exits_0_without_a_traceback():
    python, *rest = command_line("sample", "--help")
    child = subprocess.Popen([python, *rest], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.stdout.close()  # as `--help | head -3` does once it has its lines: the help meets a closed pipe
    stderr = child.stderr.read()
    assert child.wait(timeout=120) == 0 and stderr == "", stderr[-2000:]
