"""Conversations from JSONL files, in LIMA's format or OpenAI's chat `messages` format.

One record per line, either
  {"conversations": ["user", "assistant", "user", ...], "source": "stackexchange"}   (LIMA)
  {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}         (OpenAI)
and both become `{"conversations": list[str], "source": str}`. Turns alternate user/assistant,
starting with the user; an odd number of turns (LIMA's test.jsonl: the prompt only) is valid.
A system prompt, as a first `system` message or a top-level `"system": "..."` in either format, leads
the first user turn (LIMA's format has no system slot); a blank top-level one means none.
Every problem is told as `file:line: what is wrong`, so a bad record in a 1,000-line file is
found without a debugger.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, TypeVar

from lima_jax.errors import LimaError
from lima_jax.storage.paths import Path, is_cloud

Record = dict[str, Any]  # {"conversations": list[str], "source": str}

_ROLES = ("user", "assistant")


class BadLine(Exception):
    """What is wrong with one line; read_jsonl adds `file:line`."""


T = TypeVar("T")


def read_jsonl(
    path: str | os.PathLike, parse: Callable[[str], T], *, skip_invalid: bool = False
) -> tuple[list[tuple[int, T]], int]:
    """Each non-blank line of a JSONL file, parsed, with its line number; and how many were skipped.

    `parse` raises BadLine with what is wrong. With `skip_invalid=False` the first bad line raises a
    LimaError naming `file:line`; with `skip_invalid=True` bad lines are skipped and counted.
    """
    name = os.fspath(path)
    if not Path(name).is_file():
        raise LimaError(f"{name}: no such file")
    parsed: list[tuple[int, T]] = []
    skipped = 0
    # Binary lines, decoded one at a time, so that bad UTF-8 is reported with its line too.
    with Path(name).open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
                if lineno == 1:
                    text = text.removeprefix("\ufeff")  # a BOM, as some Windows editors write
                if not text.strip():
                    continue
                parsed.append((lineno, parse(text)))
            except (BadLine, UnicodeDecodeError) as e:
                why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e)
                if not skip_invalid:
                    raise LimaError(f"{name}:{lineno}: {why}") from None
                skipped += 1
    return parsed, skipped


def incomplete_tail(data: bytes) -> int | None:
    """Where a JSONL file's last line starts when its writer was killed mid-line (no newline, not
    valid JSON), else None. A last line that parses but lacks its newline is whole and is kept."""
    start = data.rfind(b"\n") + 1
    if start == len(data):
        return None
    try:
        json.loads(data[start:].decode("utf-8"))
        return None
    except (ValueError, UnicodeDecodeError):
        return start


def check_appendable(path: str | os.PathLike, parse: Callable[[str], Any], what: str) -> None:
    """Before anything is appended to (or repaired in) the JSONL file at `path`: every whole line must
    parse as `what` (`parse` raises BadLine), and a partial last line, which `repair_tail` cuts off,
    must follow such records. An unrelated file is refused in one line naming it, never touched."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    cut = incomplete_tail(data)
    whole = data if cut is None else data[:cut]
    for lineno, raw in enumerate(whole.split(b"\n"), start=1):
        try:
            if raw.strip():
                parse(raw.decode("utf-8"))
        except (BadLine, UnicodeDecodeError) as e:
            why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e)
            raise LimaError(f"{path}:{lineno}: {why}; it is not {what}: name another file") from None
    if cut is not None and not whole.strip():
        raise LimaError(f"{path}:1: not JSON; it is not {what}: name another file (or delete it, if a killed run left it)")


def repair_tail(path: str | os.PathLike) -> None:
    """Before appending to a JSONL file: cuts off an incomplete last line and ends a whole one with
    its newline, so the next record starts on a line of its own. Nothing else is touched."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    cut = incomplete_tail(data)
    if is_cloud(path):  # an object is replaced whole, never truncated or appended to
        if cut is not None or (data and not data.endswith(b"\n")):
            path.write_bytes(data[:cut] if cut is not None else data + b"\n")
        return
    with open(path, "r+b") as f:
        if cut is not None:
            f.truncate(cut)
        elif data and not data.endswith(b"\n"):
            f.seek(0, os.SEEK_END)
            f.write(b"\n")


def json_object(line: str) -> dict:
    """One JSONL line that must hold a JSON object; raises BadLine otherwise."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadLine(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise BadLine(f"expected a JSON object, got {_kind(obj)}")
    return obj


def read_conversations(path: str | os.PathLike, *, skip_invalid: bool = False) -> tuple[list[Record], int]:
    """Reads a JSONL file of conversations; returns the records and how many bad lines were skipped.

    With `skip_invalid=False` the first bad line raises a LimaError naming `file:line`; with
    `skip_invalid=True` bad lines are skipped and counted. Blank lines are ignored.
    """
    parsed, skipped = read_jsonl(path, parse_record, skip_invalid=skip_invalid)
    return [record for _, record in parsed], skipped


def parse_record(line: str) -> Record:
    """One JSONL line -> a record; raises BadLine with what is wrong."""
    obj = json_object(line)
    if "conversations" in obj and "messages" in obj:
        raise BadLine("has both 'conversations' and 'messages'; keep one")
    system = obj.get("system", "")
    if not isinstance(system, str):
        raise BadLine(f"'system' is not a string (got {_kind(system)})")
    _check_text(system, "'system'")
    if "conversations" in obj:
        turns = _lima_turns(obj["conversations"])
    elif "messages" in obj:
        turns, message = _openai_turns(obj["messages"])
        if message is not None and system.strip():
            raise BadLine("has both a top-level 'system' and a system message; keep one")
        system = message or system
    else:
        raise BadLine("no 'conversations' (LIMA format) or 'messages' (OpenAI format) list")
    source = obj.get("source", "")
    if not isinstance(source, str):
        raise BadLine(f"'source' is not a string (got {_kind(source)})")
    if system.strip():  # a model fine-tuned LIMA-style has no system slot: the instructions lead the first prompt
        turns[0] = f"{system}\n\n{turns[0]}"
    return {"conversations": turns, "source": source}


def _lima_turns(turns: Any) -> list[str]:
    if not isinstance(turns, list):
        raise BadLine(f"'conversations' is not a list (got {_kind(turns)})")
    if not turns:
        raise BadLine("'conversations' is empty")
    for i, turn in enumerate(turns, start=1):  # 1-based: the way people count turns
        if not isinstance(turn, str):
            raise BadLine(f"turn {i} is not a string (got {_kind(turn)})")
        if not turn.strip():
            raise BadLine(f"turn {i} is empty")
        _check_text(turn, f"turn {i}")
    return list(turns)


def _check_text(text: str, what: str) -> None:
    """JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer or UTF-8 file can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadLine(f"{what} holds a lone surrogate ({text[e.start]!a} at character {e.start + 1}), which is not text") from None


def _openai_turns(messages: Any) -> tuple[list[str], str | None]:
    """The user/assistant turns and the system message's content (None without one)."""
    if not isinstance(messages, list):
        raise BadLine(f"'messages' is not a list (got {_kind(messages)})")
    if not messages:
        raise BadLine("'messages' is empty")
    system: str | None = None
    turns: list[str] = []
    for i, msg in enumerate(messages, start=1):
        if not isinstance(msg, dict):
            raise BadLine(f"message {i} is not an object (got {_kind(msg)})")
        role, content = msg.get("role"), msg.get("content")
        if role not in ("system", *_ROLES):
            raise BadLine(f"message {i}: role {role!r} is not 'system', 'user' or 'assistant'")
        if not isinstance(content, str):
            raise BadLine(f"message {i}: content is not a string (got {_kind(content)})")
        if not content.strip():
            raise BadLine(f"message {i}: content is empty")
        _check_text(content, f"message {i}")
        if role == "system":
            if i != 1:
                raise BadLine(f"message {i}: a system message may only come first")
            system = content
            continue
        expected = _ROLES[len(turns) % 2]
        if role != expected:
            raise BadLine(f"message {i}: expected role {expected!r}, got {role!r} (roles alternate user/assistant, starting with user)")
        turns.append(content)
    if not turns:
        raise BadLine("'messages' has a system message but no user message")
    return turns, system


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), type(value).__name__)
