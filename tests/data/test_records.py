"""Reading conversations from JSONL: LIMA and OpenAI formats, and file:line errors."""
import json

import pytest

from lima_jax.data.records import read_conversations
from lima_jax.errors import LimaError


def write(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines), encoding="utf-8")
    return path


GOOD = {"conversations": ["Hi?", "Hello."], "source": "manual"}


def test_lima_format_and_test_prompts(tmp_path):
    path = write(tmp_path / "train.jsonl", [
        GOOD,
        "",  # blank lines are ignored
        {"conversations": ["Q1", "A1", "Q2", "A2"], "source": "stackexchange"},
        {"conversations": ["Only a prompt"]},  # test.jsonl style: an odd number of turns
    ])
    records, skipped = read_conversations(path)
    assert skipped == 0
    assert records == [
        {"conversations": ["Hi?", "Hello."], "source": "manual"},
        {"conversations": ["Q1", "A1", "Q2", "A2"], "source": "stackexchange"},
        {"conversations": ["Only a prompt"], "source": ""},
    ]


def test_openai_messages_equal_lima_format(tmp_path):
    lima = write(tmp_path / "lima.jsonl", [
        {"conversations": ["Be brief.\n\nWhat is 2+2?", "4.", "And 3+3?", "6."], "source": "x"},
        {"conversations": ["Hi", "Hello"], "source": "y"},
    ])
    openai = write(tmp_path / "openai.jsonl", [
        {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6."},
        ], "source": "x"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "source": "y"},
    ])
    assert read_conversations(openai) == read_conversations(lima)


def test_a_top_level_system_field_leads_the_first_prompt_as_a_system_message_does(tmp_path):
    """A top-level "system" (as many datasets carry it) was silently dropped: the model trained without
    the instructions the user gave it. A blank one is no system prompt, as datasets write for "none"."""
    openai = write(tmp_path / "openai.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4."}], "source": "x"},
        {"messages": [{"role": "user", "content": "Hi"}], "source": "y"},
    ])
    top_level = write(tmp_path / "top_level.jsonl", [
        {"system": "Be brief.", "conversations": ["2+2?", "4."], "source": "x"},
        {"system": " ", "messages": [{"role": "user", "content": "Hi"}], "source": "y"},
    ])
    assert read_conversations(top_level) == read_conversations(openai)
    assert read_conversations(top_level)[0][0]["conversations"] == ["Be brief.\n\n2+2?", "4."]


BAD = [
    ("{not json", "not valid JSON"),
    ({"source": "x"}, "no 'conversations' (LIMA format) or 'messages' (OpenAI format) list"),
    ({"conversations": []}, "'conversations' is empty"),
    ({"conversations": ["Q", "  \n"]}, "turn 2 is empty"),
    ({"conversations": ["Q", 7]}, "turn 2 is not a string (got int)"),
    ({"conversations": "Q"}, "'conversations' is not a list (got string)"),
    (["Q", "A"], "expected a JSON object, got list"),
    ({"messages": []}, "'messages' is empty"),
    ({"messages": [{"role": "assistant", "content": "A"}]}, "message 1: expected role 'user', got 'assistant'"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q"}]}, "message 2: expected role 'assistant', got 'user'"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}]}, "message 2: role 'bot' is not"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "system", "content": "S"}]}, "message 2: a system message may only come first"),
    ({"messages": [{"role": "system", "content": "S"}]}, "no user message"),
    ({"messages": [{"role": "user", "content": ""}]}, "message 1: content is empty"),
    ({"messages": [{"role": "user", "content": ["parts"]}]}, "message 1: content is not a string (got list)"),
    ({"system": 7, "conversations": ["Q", "A"]}, "'system' is not a string (got int)"),
    ({"system": "S", "messages": [{"role": "system", "content": "T"}, {"role": "user", "content": "Q"}]},
     "has both a top-level 'system' and a system message; keep one"),
]


@pytest.mark.parametrize("line, why", BAD)
def test_bad_line_names_file_line_and_problem(tmp_path, line, why):
    path = write(tmp_path / "train.jsonl", [GOOD, GOOD, line, GOOD])
    with pytest.raises(LimaError) as e:
        read_conversations(path)
    message = str(e.value)
    assert message.startswith(f"{path}:3: "), message
    assert why in message
    assert "\n" not in message


def test_spec_example_message(tmp_path):
    path = write(tmp_path / "train.jsonl", [GOOD] * 16 + [{"conversations": ["Q", ""]}])
    with pytest.raises(LimaError, match=r"train\.jsonl:17: turn 2 is empty$"):
        read_conversations(path)


def test_skip_invalid_counts_bad_lines(tmp_path):
    path = write(tmp_path / "train.jsonl", [GOOD] + [line for line, _ in BAD] + [GOOD])
    (tmp_path / "bad_utf8.jsonl").write_bytes(b'{"conversations": ["\xff"]}\n' + json.dumps(GOOD).encode() + b"\n")
    records, skipped = read_conversations(path, skip_invalid=True)
    assert records == [GOOD, GOOD]
    assert skipped == len(BAD)
    assert read_conversations(tmp_path / "bad_utf8.jsonl", skip_invalid=True) == ([GOOD], 1)
    with pytest.raises(LimaError, match=r"bad_utf8\.jsonl:1: not UTF-8 text"):
        read_conversations(tmp_path / "bad_utf8.jsonl")


def test_missing_file(tmp_path):
    with pytest.raises(LimaError, match="nope.jsonl: no such file"):
        read_conversations(tmp_path / "nope.jsonl")
