"""The judging and report commands never import JAX: `--help` and a whole judging run stay light. And what
the README shows of the commands holds: the files a run writes, `data.inspect`'s output, the dialogue demo's
inputs, and that git ignores what the commands write."""
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest
from support.commands import call_command, succeeded
from support.paths import REPO

from lima_jax.data import demo_dir


@pytest.mark.parametrize("command", ["evaluate.report", "evaluate.pairwise", "evaluate.absolute", "evaluate.dialogue"])
def test_command_help_imports_no_jax(command):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", f"lima_jax.{command}", "--help"],
                       capture_output=True, text=True)
    assert "usage" in r.stdout.lower() or "flags" in r.stdout.lower(), r.stdout[-500:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "lima_jax.cli" in imported  # the measurement sees our imports
    assert not {m for m in imported if m == "jax" or m.startswith("jax.")}, "JAX was imported"


def test_a_report_runs_without_jax(tmp_path):
    cache = tmp_path / "absolute.jsonl"
    cache.write_text('{"key": "k1", "kind": "absolute", "judge": "j", "prompt_id": "p1", "verdict": "Pass", '
                     '"output_hash": "h", "version": 1}\n')
    code = ("import runpy, sys; sys.argv = ['report', '--out_dir=%s', '--absolute=%s', '--bootstrap=10'];"
            "\ntry:\n    runpy.run_module('lima_jax.evaluate.report', run_name='__main__')\nexcept SystemExit as e:\n"
            "    print('jax loaded:', 'jax' in sys.modules, 'exit:', e.code)") % (tmp_path / "report", cache)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().splitlines()[-1] == "jax loaded: False exit: 0", r.stdout[-800:] + r.stderr[-800:]


def section(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_quick_start_names_every_file_a_run_writes(small_run):
    """It listed neither tfds/ nor tokenizer.model."""
    listing = section("Quick start").split("The run writes `runs/tiny/`:", 1)[1].split("\n\n", 1)[0]
    missing = [name for name in os.listdir(small_run) if f"`{name}{'/' * (small_run / name).is_dir()}" not in listing]
    assert not missing, missing


def test_the_readme_shows_what_data_inspect_prints():
    """It showed the output of `--index=5`, not of the command as written."""
    block = section("The paper's run").split("python -m lima_jax.data.inspect --config=tiny", 1)[1].split("```", 1)[0]
    shown = [line[2:] for line in block.splitlines()[1:] if line.startswith("# ")]
    printed = succeeded(call_command("data.inspect", "--config=tiny")).splitlines()
    assert shown and printed[-len(shown):] == shown


def test_the_dialogue_demo_uses_shipped_files_and_runs_the_readme_makes():
    """It read a dialogues.jsonl and a runs/tiny-dialogue that nothing shipped or made."""
    block = section("From checkpoint to verdict")
    assert re.findall(r"--dialogues=(\S+)", block) == ["$DEMO/dialogues.jsonl"]
    shipped = re.findall(r"\$DEMO/([\w.]+)", block)
    assert {"dialogues.jsonl", "train.jsonl"} <= set(shipped) and all((demo_dir() / name).is_file() for name in shipped)
    made = {"runs/tiny", *re.findall(r"--config.workdir=(\S+)", (REPO / "README.md").read_text(encoding="utf-8"))}
    command = block.split("python -m lima_jax.evaluate.dialogue", 1)[1].split("```", 1)[0]
    used = re.findall(r"--(?:judge_)?checkpoint=(?:[\w-]+=)?(\S+)", command)
    assert used and set(used) <= made, (used, made)


def test_the_shipped_dialogues_are_training_chains_and_scripts_and_make_demo_writes_them():
    from lima_jax.data.records import read_conversations
    from lima_jax.evaluate.protocols.dialogue import read_dialogues

    path = demo_dir() / "dialogues.jsonl"
    records, _ = read_conversations(path)
    assert len(records) == 10 and all(len(r["conversations"]) == 6 for r in records)
    assert [len(d.asks) for d in read_dialogues(str(path))] == [3] * 10
    spec = importlib.util.spec_from_file_location("make_demo", demo_dir() / "make_demo.py")
    make_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_demo)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == make_demo.dialogue_chains(random.Random(1))


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a git checkout")
def test_what_the_readme_commands_write_is_ignored_by_git():
    """likert*.jsonl and dialogue/ were not ignored."""
    text = section("Quick start") + section("From checkpoint to verdict")
    files = re.findall(r"--(?:output|cache)=([\w./-]+)|> ([\w./-]+)", text)
    folders = re.findall(r"--(?:out_dir|config.workdir|config.data.manual_dir)=([\w./-]+)", text)
    written = {"runs/tiny/", *(f + g for f, g in files), *(f"{folder}/" for folder in folders)}
    r = subprocess.run(["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *sorted(written)],
                       cwd=REPO, capture_output=True, text=True)
    assert not [line.split("\t")[-1] for line in r.stdout.splitlines() if line.startswith("::")]
