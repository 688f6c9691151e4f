"""`lima_jax.curate --source=wikihow` on the WikiHow-Dataset CSVs in their real layouts (wikihowAll.csv:
headline,title,text; wikihowSep.csv: overview,headline,text,sectionLabel,title); one article per rule."""
import csv
import json
import math
import random

import pytest

from lima_jax.curate.pipeline import Options, curate
from lima_jax.curate.sampling import Candidate, temperature_sample
from lima_jax.data.records import read_conversations
from lima_jax.errors import LimaError

ALL_ROWS = [
    ["headline", "title", "text"],
    # the dataset's shape: bold lines one a line ending in ".,", paragraphs one a line after a ","
    ["\nKeep related supplies in the same area.,\nMake an effort to clean a dedicated workspace after every session.",
     "How to Be an Organized Artist",
     " This article helps photographers: keep all the lenses and cords in the same corner of your studio.\n"
     ",Any time you finish a session, clear the table (see https://example.com/tips) ."],
    ["\nA step.", "", " A paragraph."],  # no title
    ["\nFirst step.,\nSecond step.", "How to Juggle Three Balls", " Only one paragraph."],  # unpaired
    ["\nKeep supplies together.", "How to Be an  Organized   Artist", " Another paragraph."],  # a duplicate title
    ["", "How to Do Nothing", ""],  # no text
]
SEP_ROWS = [
    ["overview", "headline", "text", "sectionLabel", "title"],
    ["This article explains how to cook an omelette.", "\nBeat the eggs.", "Whisk two eggs with a pinch of salt.", "Classic", "How to Cook an Omelette"],
    ["This article explains how to cook an omelette.", "\nHeat the pan", "Melt butter over medium heat.", "Classic", "How to Cook an Omelette"],
    ["This article explains how to cook an omelette.", "\nFold it.", "Fold the omelette in half and serve.", "Fluffy", "How to Cook an Omelette"],
    ["This article explains how to cook an omelette.", "\nUse fresh eggs.", "Fresh eggs taste better.", "Tips", "How to Cook an Omelette"],
    ["", "\nCross the wide end.", "Cross the wide end over the narrow end.", "Steps", "How to Tie a Tie"],
    ["", "\nPull it through.", "Pull the wide end through the loop.", "Steps", "How to Tie a Tie"],
    ["", "\nNever run with knives.", "It is dangerous.", "Warnings", "How to Run"],  # all pruned: no text
]
OMELETTE = ("The following answer explains how to cook an omelette.\n\n"
            "## Classic\n1. Beat the eggs. Whisk two eggs with a pinch of salt.\n2. Heat the pan. Melt butter over medium heat.\n\n"
            "## Fluffy\n1. Fold it. Fold the omelette in half and serve.")
ARTIST = ("1. Keep related supplies in the same area. The following answer helps photographers: keep all the lenses and cords "
          "in the same corner of your studio.\n"
          "2. Make an effort to clean a dedicated workspace after every session. Any time you finish a session, clear the table (see).")


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(path)


@pytest.fixture
def files(tmp_path):
    return write_csv(tmp_path / "wikihowAll.csv", ALL_ROWS), write_csv(tmp_path / "wikihowSep.csv", SEP_ROWS)


def run(tmp_path, inputs, name="wh.jsonl", **kw):
    report = curate(Options(source="wikihow", inputs=tuple(inputs), output=str(tmp_path / name), **kw), say=lambda _: None)
    records, _ = read_conversations(tmp_path / name)
    raw = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    return report, records, raw


def test_wikihow_all_keeps_the_articles_that_pass_with_steps_paired_to_their_summaries(tmp_path, files):
    report, records, raw = run(tmp_path, files[:1])
    assert [r["conversations"] for r in records] == [["How to Be an Organized Artist?", ARTIST]]
    assert {k: v for k, v in report.as_json()["per_stratum"]["wikihowAll.csv"].items() if v} == {
        "candidates": 5, "no_title": 1, "steps_unpaired": 1, "no_text": 1, "duplicate": 1, "written": 1}
    assert raw[0]["meta"] == {"title": "How to Be an Organized Artist", "url": "https://www.wikihow.com/Be-an-Organized-Artist",
                              "category": None, "file": "wikihowAll.csv", "line": 2, "license": "CC BY-NC-SA 3.0"}
    assert raw[0]["source"] == "wikihow"


def test_wikihow_sep_reassembles_articles_by_section_and_prunes_tips_and_warnings(tmp_path, files):
    report, records, _ = run(tmp_path, files[1:])
    by_prompt = {r["conversations"][0]: r["conversations"][1] for r in records}
    assert by_prompt == {"How to Cook an Omelette?": OMELETTE,
                         "How to Tie a Tie?": "1. Cross the wide end. Cross the wide end over the narrow end.\n"
                                              "2. Pull it through. Pull the wide end through the loop."}
    assert report.totals()["no_text"] == 1 and report.totals()["candidates"] == 3


def test_a_category_file_makes_categories_the_strata_and_drops_articles_without_one(tmp_path, files):
    (tmp_path / "cats.tsv").write_text("How to Cook an Omelette\tFood and Entertaining\nHow to Be an Organized Artist\tArts and Entertainment\n")
    report, records, raw = run(tmp_path, files, categories=str(tmp_path / "cats.tsv"))
    assert sorted((r["meta"]["category"], r["conversations"][0]) for r in raw) == [
        ("Arts and Entertainment", "How to Be an Organized Artist?"), ("Food and Entertaining", "How to Cook an Omelette?")]
    assert report.as_json()["per_stratum"]["(no category)"]["no_category"] == 1  # the tie


def test_exclude_drops_an_article_whose_title_is_a_test_prompt(tmp_path, files):
    (tmp_path / "test.jsonl").write_text(json.dumps({"conversations": ["how to tie a tie"]}) + "\n")
    report, records, _ = run(tmp_path, files[1:], exclude=(str(tmp_path / "test.jsonl"),))
    assert [r["conversations"][0] for r in records] == ["How to Cook an Omelette?"]
    assert report.totals()["test_overlap"] == 1


def test_fewer_records_than_asked_for_are_a_warning_naming_the_rules_that_removed_the_rest(tmp_path, files):
    """Asked for 200 it wrote 1 and said only "wrote 1 records"."""
    said = []
    curate(Options(source="wikihow", inputs=files[:1], output=str(tmp_path / "wh.jsonl"), num_examples=200), say=said.append)
    assert said[-1] == ("warning: wrote 1 of the 200 records asked for (--num_examples): only 1 of the 5 candidates "
                        "passed the rules (removed: no_title 1, steps_unpaired 1, no_text 1, duplicate 1)")
    said.clear()
    curate(Options(source="wikihow", inputs=files[:1], output=str(tmp_path / "one.jsonl"), num_examples=1), say=said.append)
    assert not any(line.startswith("warning") for line in said)


def test_a_csv_with_other_columns_is_an_error_naming_the_file(tmp_path):
    path = write_csv(tmp_path / "other.csv", [["a", "b"], ["1", "2"]])
    with pytest.raises(LimaError, match=r"other.csv:1: expected the columns headline,title,text"):
        run(tmp_path, [path])


def test_category_first_sampling_draws_categories_uniformly_whatever_their_size():
    strata = {"big": [Candidate("p", "r", "s", "big", (0,), {}) for _ in range(100)],
              "small": [Candidate("p", "r", "s", "small", (0,), {}) for _ in range(2)]}
    draws = [c.stratum for seed in range(400) for c in temperature_sample(strata, 1, math.inf, random.Random(seed))]
    assert draws.count("small") / len(draws) == pytest.approx(0.5, abs=0.06)
