"""The shared response-file format."""
import json

import pytest

from lima_jax.errors import LimaError
from lima_jax.evaluate.answers.records import make_record, prompt_id, write_responses
from lima_jax.evaluate.answers.formats import read_responses


def test_round_trip_and_stable_ids(tmp_path):
    path = tmp_path / "lima.jsonl"
    write_responses(path, [make_record(["What is 2+2?"], "4", "lima-7b"),
                           make_record(["hi", "hello", "bye"], "goodbye", "lima-7b", id="custom-1")])
    records = read_responses(path)
    assert list(records) == [prompt_id(["What is 2+2?"]), "custom-1"]
    assert records["custom-1"] == {"id": "custom-1", "prompt": ["hi", "hello", "bye"], "output": "goodbye",
                                   "generator": "lima-7b"}
    # The same turns hash the same in any file, other turns differently.
    assert prompt_id(["What is 2+2?"]) == prompt_id(("What is 2+2?",)) != prompt_id(["What is 2+3?"])
    assert len(prompt_id(["x"])) == 16


def test_optional_fields_default(tmp_path):
    path = tmp_path / "alpaca.jsonl"  # the sample command's output: prompt and output only
    path.write_text(json.dumps({"prompt": ["Name a colour."], "output": "Blue."}) + "\n\n"
                    + json.dumps({"prompt": "A single turn.", "output": "ok"}) + "\n")
    records = read_responses(path)
    assert [r["generator"] for r in records.values()] == ["alpaca", "alpaca"]
    assert records[prompt_id(["A single turn."])]["prompt"] == ["A single turn."]


@pytest.mark.parametrize("line,why", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"prompt": ["q"]}', "missing 'output'"),
    ('{"prompt": [], "output": "a"}', "non-empty list"),
    ('{"prompt": ["q", "a"], "output": "a"}', "end with a user turn"),
    ('{"prompt": ["q"], "output": 3}', "'output' must be a string"),
    ('{"prompt": ["q"], "output": "a", "id": 5}', "'id' must be"),
    ('{"prompt": ["q0"], "output": "again", "id": "p0"}', "already appears on line 1"),
])
def test_bad_lines_are_named_by_file_and_line(tmp_path, line, why):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"id": "p0", "prompt": ["q0"], "output": "a0"}) + "\n" + line + "\n")
    with pytest.raises(LimaError, match=rf"r\.jsonl:2: .*{why}"):
        read_responses(path)


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(LimaError, match="no such file"):
        read_responses(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LimaError, match="no responses"):
        read_responses(tmp_path / "empty.jsonl")
