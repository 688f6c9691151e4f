"""The TFDS builder: JSONL -> array_record -> `as_data_source`, without TensorFlow."""
import json
import sys

import pytest

from lima_jax.data import demo_dir
from lima_jax.data.lima import Conversations, dev_split, load_split
from lima_jax.data.records import read_conversations
from lima_jax.errors import LimaError

TRAIN = [
    {"conversations": ["What is 2+2?", "4."], "source": "manual"},
    {"conversations": ["Ünïcødé? 🦙", "Yes: ünïcødé.\n\nTwo lines."], "source": "stackexchange"},
    {"conversations": ["Q1", "A1", "Q2", "A2"], "source": "multi"},
]
TEST = [{"conversations": ["Write a haiku."], "source": "test"}]


def write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


@pytest.fixture
def manual(tmp_path):
    d = tmp_path / "lima"
    d.mkdir()
    write(d / "train.jsonl", TRAIN)
    write(d / "test.jsonl", TEST)
    return d


def test_round_trip_without_tensorflow(manual, tmp_path):
    cache = tmp_path / "tfds"
    train, skipped = load_split(manual, "train", cache_dir=cache)
    test, _ = load_split(manual, "test", cache_dir=cache)
    assert skipped == 0
    assert isinstance(train, Conversations)
    assert len(train) == 3 and list(train) == TRAIN  # str, in file order
    assert train[-1] == TRAIN[-1] and train[1:] == TRAIN[1:]
    assert list(test) == TEST
    assert "tensorflow" not in sys.modules  # TFDS wrote and read it all alone
    (built,) = cache.iterdir()
    files = sorted(p.name for p in (built / "lima" / "1.0.0").iterdir())
    assert "lima-train.array_record-00000-of-00001" in files and "lima-test.array_record-00000-of-00001" in files
    with pytest.raises(LimaError, match="dev.jsonl not found.*GAIR/lima"):
        load_split(manual, "dev", cache_dir=cache)


def test_changing_a_file_rebuilds(manual, tmp_path):
    cache = tmp_path / "tfds"
    first, _ = load_split(manual, "train", cache_dir=cache)
    assert len(first) == 3
    again, _ = load_split(manual, "train", cache_dir=cache)  # same contents: the same build
    assert len(list(cache.iterdir())) == 1 and list(again) == TRAIN
    write(manual / "train.jsonl", TRAIN[:2])
    write(manual / "dev.jsonl", TRAIN[2:])
    train, _ = load_split(manual, "train", cache_dir=cache)
    dev, _ = load_split(manual, "dev", cache_dir=cache)
    assert list(train) == TRAIN[:2] and list(dev) == TRAIN[2:]
    assert len(list(cache.iterdir())) == 2


def test_missing_dir_says_where_lima_comes_from(tmp_path):
    with pytest.raises(LimaError) as e:
        load_split(tmp_path / "nowhere", "train", cache_dir=tmp_path / "tfds")
    message = str(e.value)
    assert "nowhere not found" in message and "GAIR/lima" in message and "Hugging Face" in message
    assert "license" in message and "--config.data.manual_dir" in message
    with pytest.raises(LimaError, match="unknown split 'validation'"):
        load_split(tmp_path, "validation", cache_dir=tmp_path / "tfds")


def test_bad_record_stops_before_building(manual, tmp_path):
    cache = tmp_path / "tfds"
    (manual / "train.jsonl").write_text(json.dumps(TRAIN[0]) + '\n{"conversations": ["Q", 3]}\n' + json.dumps(TRAIN[1]) + "\n")
    with pytest.raises(LimaError, match=r"train\.jsonl:2: turn 2 is not a string \(got int\)"):
        load_split(manual, "train", cache_dir=cache)
    assert not cache.exists()
    train, skipped = load_split(manual, "train", cache_dir=cache, skip_invalid=True)
    assert skipped == 1 and list(train) == TRAIN[:2]
    with pytest.raises(LimaError, match=r"train\.jsonl:2:"):  # a cached build does not hide the error
        load_split(manual, "train", cache_dir=cache)


def test_openai_format_goes_through_the_builder(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    write(d / "train.jsonl", [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}])
    train, _ = load_split(d, "train", cache_dir=tmp_path / "tfds")
    assert list(train) == [{"conversations": ["S\n\nQ", "A"], "source": ""}]


def test_dev_split():
    records = [{"conversations": [str(i), "a"], "source": ""} for i in range(100)]
    train, dev = dev_split(records, 10, seed=3)
    assert len(train) == 90 and len(dev) == 10
    assert sorted(train + dev, key=lambda r: int(r["conversations"][0])) == records
    assert train == sorted(train, key=lambda r: int(r["conversations"][0]))  # original order kept
    assert dev_split(records, 10, seed=3) == (train, dev)
    assert dev_split(records, 10, seed=4)[1] != dev
    assert dev_split(records, 0, seed=0) == (records, [])
    with pytest.raises(LimaError, match="config key data.dev_size: holding out 100 dev examples leaves none of the 100"):
        dev_split(records, 100, seed=0)


def test_demo_data_builds(tmp_path):
    train, skipped = load_split(demo_dir(), "train", cache_dir=tmp_path / "tfds")
    expected, _ = read_conversations(demo_dir() / "train.jsonl")
    assert skipped == 0 and 700 <= len(train) <= 1000 and list(train) == expected
    assert any(len(r["conversations"]) > 2 for r in expected)
