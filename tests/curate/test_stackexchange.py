"""`lima_jax.curate` on Stack Exchange dumps in their real format: Posts.xml rows with HTML bodies,
inside a site's .7z (written with py7zr) or an extracted folder; one question per rule."""
import json
import random
import subprocess
import sys
import tracemalloc

import py7zr
import pytest

from lima_jax.curate import dumps, stackexchange, text
from lima_jax.curate.pipeline import Options, curate
from lima_jax.curate.sampling import Candidate, temperature_sample
from lima_jax.data.records import read_conversations
from lima_jax.errors import LimaError
from support.stackexchange import posts_xml, prose, row

# The top answer of question 1: every kind of markup the cleaner meets.
A1_HTML = (
    f"<p>{prose(1100)}</p>\n"
    '<p>See <a href="https://en.wikipedia.org/wiki/Boiling_point">the boiling point</a> and '
    '<a href="https://example.com/x">https://example.com/x</a> for more.<img src="https://i.sstatic.net/x.png" alt="plot"></p>\n'
    "<ul>\n<li>At sea level: <strong>100 &deg;C</strong></li>\n<li>On Everest: about <em>70 &deg;C</em></li>\n</ul>\n"
    "<pre><code>def boiling_point(p):\n    return 100 if p &gt;= 1 else 70\n</code></pre>\n"
    "<p>Use <code>boiling_point(0.3)</code> to check.</p>"
)
A1_TEXT = (
    f"{prose(1100)}\n\n"
    "See the boiling point and for more.\n\n"
    "- At sea level: 100 °C\n- On Everest: about 70 °C\n\n"
    "```\ndef boiling_point(p):\n    return 100 if p >= 1 else 70\n```\n\n"
    "Use `boiling_point(0.3)` to check."
)


def question(qid, score, title, body, owner=7):
    return row(Id=qid, PostTypeId=1, Score=score, Title=title, Body=body, OwnerUserId=owner,
               CreationDate="2020-01-01T00:00:00.000", ContentLicense="CC BY-SA 4.0")


def answer(aid, parent, score, body, owner=8):
    return row(Id=aid, PostTypeId=2, ParentId=parent, Score=score, Body=body, OwnerUserId=owner, ContentLicense="CC BY-SA 4.0")


MATH = [  # math.stackexchange.com (STEM), shipped as its .7z
    question(1, 50, "Why does water boil at a lower temperature on a mountain?", "<p>Why does water boil sooner up high?</p>"),
    answer(11, 1, 25, A1_HTML),
    answer(12, 1, 12, f"<p>{prose(1500)}</p>"),  # not the top answer
    question(1000000001, 40, "Community question", "<p>A fake post by the Community user.</p>", owner=-1),
    answer(1000000010, 1000000001, 30, f"<p>{prose(1500)}</p>"),
    question(3, 30, "Low scored answer", "<p>What decides the shape of a raindrop as it falls?</p>"),
    answer(31, 3, 9, f"<p>{prose(1500)}</p>"),
    question(4, 29, "Short answer", "<p>How long does ice take to melt in a glass of water?</p>"),
    answer(41, 4, 15, f"<p>{prose(1199)}</p>"),
    question(5, 28, "Long answer", "<p>Why is the sky blue during the day but red at sunset?</p>"),
    answer(51, 5, 15, f"<p>{prose(4100)}</p>"),
    question(6, 27, "First person", "<p>What makes a boomerang come back to the thrower?</p>"),
    answer(61, 6, 15, f"<p>{prose(1300)} I think so too.</p>"),
    question(7, 26, "Refers to others", "<p>Why do onions make people cry when cut?</p>"),
    answer(71, 7, 15, f"<p>{prose(1300)} As mentioned in the comments, it depends.</p>"),
    question(8, 25, "Community answer", "<p>How do bees find their way back to the hive?</p>"),
    answer(81, 8, 100, f"<p>{prose(1500)}</p>", owner=-1),  # outscores the real answer, but never counts
    answer(82, 8, 11, f"<p>{prose(1300)}</p>"),
    question(9, 24, "First person in code", "<p>Why does a loop variable keep its last value after the loop?</p>"),
    answer(91, 9, 15, f"<p>{prose(1300)}</p><pre><code># I my me\nfor i in range(3): pass\n</code></pre>"),
    question(10, 23, "Empty body", '<p><img src="https://i.sstatic.net/only.png"></p>'),
    answer(101, 10, 15, f"<p>{prose(1300)}</p>"),
    question(13, 22, "Unanswered", "<p>Is there a largest prime gap below a million?</p>"),
]
COOKING = [  # cooking.stackexchange.com (other), as an extracted folder
    question(1, 40, "How do I keep pasta from sticking?", "<p>How can pasta be kept from sticking together in the pot?</p>"),
    answer(2, 1, 20, f"<p>{prose(1300)}</p>"),
    question(3, 30, "Overlap", "<p>What is the best way to season a cast iron pan at home today?</p>"),
    answer(4, 3, 20, f"<p>{prose(1300)}</p>"),
    question(5, 5, "Duplicate", "<p>Why does water boil sooner, up high?</p>"),  # question 1 of math, worse ranked
    answer(6, 5, 20, f"<p>{prose(1300)}</p>"),
]
TEST_SET = {"conversations": ["Tell me the best way to season a cast iron pan at home without an oven"], "source": "test"}


@pytest.fixture
def dumps_dir(tmp_path):
    with py7zr.SevenZipFile(tmp_path / "math.stackexchange.com.7z", "w") as z:
        z.writestr('<?xml version="1.0" encoding="utf-8"?>\n<badges>\n' + row(Id=1, UserId=7, Name="Teacher") * 500 + "</badges>\n", "Badges.xml")
        z.writestr(posts_xml(MATH), "Posts.xml")  # a dump's tables in one solid archive, Posts.xml not first
        z.writestr(posts_xml([]), "Comments.xml")
    (tmp_path / "cooking.stackexchange.com").mkdir()
    (tmp_path / "cooking.stackexchange.com" / "Posts.xml").write_text(posts_xml(COOKING), encoding="utf-8")
    (tmp_path / "math.meta.stackexchange.com").mkdir()
    (tmp_path / "math.meta.stackexchange.com" / "Posts.xml").write_text(posts_xml(COOKING), encoding="utf-8")
    (tmp_path / "test.jsonl").write_text(json.dumps(TEST_SET) + "\n")
    return tmp_path


def run(dumps_dir, name="out.jsonl", **kw):
    inputs = tuple(str(dumps_dir / n) for n in ("math.stackexchange.com.7z", "cooking.stackexchange.com", "math.meta.stackexchange.com"))
    opts = dict(source="stackexchange", inputs=inputs, output=str(dumps_dir / name), title_ratio=0.0,
                exclude=(str(dumps_dir / "test.jsonl"),))
    opts.update(kw)
    report = curate(Options(**opts), say=lambda _: None)
    records, _ = read_conversations(dumps_dir / name)  # the trainer's reader takes the file as it is
    raw = [json.loads(line) for line in (dumps_dir / name).read_text().splitlines()]
    return report, records, raw


def test_the_paper_filters_keep_exactly_the_questions_that_pass_every_rule(dumps_dir):
    report, records, raw = run(dumps_dir)
    kept = [(r["meta"]["site"], r["meta"]["question_id"], r["meta"]["answer_id"]) for r in raw]
    # the groups in order (other, stem), each exchange's questions best-scored first
    assert kept == [("cooking.stackexchange.com", 1, 2), ("math.stackexchange.com", 1, 11),
                    ("math.stackexchange.com", 8, 82), ("math.stackexchange.com", 9, 91)]
    math_counts = report.as_json()["per_stratum"]["math.stackexchange.com"]
    assert {k: v for k, v in math_counts.items() if v} == {
        "candidates": 11, "community_user": 1, "no_top_answer": 2, "answer_too_short": 1, "answer_too_long": 1,
        "first_person": 1, "refers_to_other_answers": 1, "empty_prompt": 1, "written": 3}
    cooking = report.as_json()["per_stratum"]["cooking.stackexchange.com"]
    assert {k: v for k, v in cooking.items() if v} == {"candidates": 3, "test_overlap": 1, "duplicate": 1, "written": 1}
    assert report.skipped_inputs == ["math.meta.stackexchange.com"]
    assert [r["source"] for r in records] == ["stackexchange"] * 4


def test_the_answer_is_cleaned_to_text_with_its_code_and_list_and_without_links_and_images(dumps_dir):
    _, records, raw = run(dumps_dir)
    assert records[1]["conversations"] == ["Why does water boil sooner up high?", A1_TEXT]
    assert raw[1]["meta"] == {
        "site": "math.stackexchange.com", "group": "stem", "question_id": 1, "answer_id": 11, "question_score": 50,
        "answer_score": 25, "prompt_from": "body", "title": "Why does water boil at a lower temperature on a mountain?",
        "url": "https://math.stackexchange.com/questions/1", "answer_url": "https://math.stackexchange.com/a/11",
        "license": "CC BY-SA 4.0", "question_license": "CC BY-SA 4.0"}


def test_the_report_is_written_next_to_the_output_with_every_rule(dumps_dir):
    run(dumps_dir)
    report = json.loads((dumps_dir / "out.jsonl.report.json").read_text())
    assert report["total"]["written"] == 4
    assert list(report["rules"]) == [*stackexchange.RULES, "test_overlap", "duplicate", "not_sampled"]
    assert report["settings"]["filters"] == "paper"


def test_without_filters_only_the_community_user_empty_prompts_overlap_and_duplicates_are_dropped(dumps_dir):
    report, _, raw = run(dumps_dir, filters="none")
    kept = sorted((r["meta"]["site"][:4], r["meta"]["question_id"]) for r in raw)
    assert kept == [("cook", 1), ("math", 1), ("math", 3), ("math", 4), ("math", 5), ("math", 6), ("math", 7), ("math", 8), ("math", 9)]
    assert report.totals()["no_top_answer"] == 1  # question 13: no answer at all
    assert [r["meta"]["answer_id"] for r in raw if r["meta"]["question_id"] == 8] == [82]


def test_num_examples_splits_between_stem_and_other_and_takes_the_best_scored_first(dumps_dir):
    report, _, raw = run(dumps_dir, num_examples=3)
    # other (cooking) has one candidate, so STEM gives the third: its two best-scored questions
    assert [(r["meta"]["group"], r["meta"]["question_id"]) for r in raw] == [("other", 1), ("stem", 1), ("stem", 8)]
    assert report.totals()["not_sampled"] == 1


def test_the_title_or_body_prompt_is_chosen_by_a_seeded_ratio(dumps_dir):
    _, _, titles = run(dumps_dir, "titles.jsonl", title_ratio=1.0)
    prompts = {(r["meta"]["site"][:4], r["meta"]["question_id"]): r["conversations"][0] for r in titles}
    assert prompts[("math", 1)] == "Why does water boil at a lower temperature on a mountain?"
    assert prompts[("cook", 3)] == "Overlap"  # the rules read the prompt chosen: this title overlaps no test prompt
    assert {r["meta"]["prompt_from"] for r in titles} == {"title"}
    from_a = [r["meta"]["prompt_from"] for r in run(dumps_dir, "a.jsonl", title_ratio=0.5, filters="none", seed=1)[2]]
    from_b = [r["meta"]["prompt_from"] for r in run(dumps_dir, "b.jsonl", title_ratio=0.5, filters="none", seed=1)[2]]
    assert from_a == from_b and set(from_a) == {"title", "body"}


def test_an_existing_output_is_refused_unless_overwrite(dumps_dir):
    run(dumps_dir)
    with pytest.raises(LimaError, match="already exists"):
        run(dumps_dir)
    run(dumps_dir, overwrite=True)


def test_a_site_missing_from_the_exchange_list_is_an_error_naming_the_list(dumps_dir, tmp_path):
    listing = tmp_path / "mine.tsv"
    listing.write_text("math.stackexchange.com stem\n")
    with pytest.raises(LimaError, match=r"mine.tsv: no line for site 'cooking.stackexchange.com'"):
        run(dumps_dir, exchanges=str(listing))
    listing.write_text("math.stackexchange.com science\n")
    with pytest.raises(LimaError, match=r"mine.tsv:1: expected 'SITE GROUP'"):
        run(dumps_dir, exchanges=str(listing))


def test_a_folder_of_sites_reads_each_archive_and_extracted_site_in_it(dumps_dir):
    found = stackexchange.find_dumps([str(dumps_dir)])
    assert [site for site, _ in found] == ["cooking.stackexchange.com", "math.meta.stackexchange.com", "math.stackexchange.com"]
    _, _, raw = run(dumps_dir, inputs=(str(dumps_dir),))
    assert len(raw) == 4


def test_the_shipped_exchange_list_groups_the_big_sites():
    groups = stackexchange.load_exchanges()
    assert groups["stackoverflow.com"] == "stem" and groups["math.stackexchange.com"] == "stem"
    assert groups["cooking.stackexchange.com"] == "other" and groups["english.stackexchange.com"] == "other"
    assert stackexchange.site_name("/d/stackoverflow.com-Posts.7z") == "stackoverflow.com"


def test_broken_xml_is_an_error_naming_the_file_and_line(tmp_path):
    (tmp_path / "Posts.xml").write_text('<posts>\n  <row Id="1" />\n  <row Id="2"\n</posts>\n')
    with pytest.raises(LimaError, match=r"Posts.xml:4: not valid XML"):
        with dumps.posts_xml(str(tmp_path)) as rows:
            list(rows)


def test_rows_stream_from_inside_the_7z_and_reading_part_of_them_stops_the_decompression(tmp_path):
    with py7zr.SevenZipFile(tmp_path / "big.7z", "w") as z:
        z.writestr(posts_xml([answer(i, 1, i, prose(200)) for i in range(3000)]), "Posts.xml")
    with dumps.posts_xml(str(tmp_path / "big.7z")) as rows:
        assert [r["Id"] for r in rows] == [str(i) for i in range(3000)]
    with dumps.posts_xml(str(tmp_path / "big.7z")) as rows:
        assert next(rows)["Id"] == "0"  # leaving early joins the decompressing thread rather than hanging


def test_memory_does_not_grow_with_the_posts_file(tmp_path):
    path = tmp_path / "Posts.xml"
    with open(path, "w", encoding="utf-8") as f:
        f.write("<posts>\n")
        for i in range(20_000):
            f.write(answer(i, 1, 1, prose(1000)))
        f.write("</posts>\n")
    assert path.stat().st_size > 20_000_000
    tracemalloc.start()
    with dumps.posts_xml(str(path)) as rows:
        count = sum(1 for _ in rows)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 20_000 and peak < 3_000_000


def test_temperature_three_draws_exchanges_in_proportion_to_the_cube_root_of_their_size():
    strata = {"big": [Candidate("p", "r", "s", "big", (0,), {}) for _ in range(729)],
              "small": [Candidate("p", "r", "s", "small", (0,), {}) for _ in range(27)]}
    def share(temperature):
        draws = [c.stratum for seed in range(200) for c in temperature_sample(strata, 20, temperature, random.Random(seed))]
        return draws.count("small") / len(draws)
    assert share(3.0) == pytest.approx(3 / (9 + 3), abs=0.03)  # 27^(1/3) / (729^(1/3) + 27^(1/3))
    assert share(1.0) == pytest.approx(27 / 756, abs=0.015)


def test_first_person_and_reference_phrases_are_read_in_prose_only():
    assert text.first_person("It is so, i.e. fine; `I` is a variable.") is None
    assert text.first_person("So my view differs.") == "my"
    phrases = text.load_phrases()
    assert "as mentioned" in phrases and "stack exchange" in phrases
    assert text.reference_phrase("As  Mentioned before", phrases) == "as mentioned"
    assert text.reference_phrase("The pharmacist mentioned it.", phrases) is None


def test_the_command_writes_the_file_and_a_missing_input_is_one_line_and_exit_2(dumps_dir):
    out = dumps_dir / "cmd.jsonl"
    args = [sys.executable, "-m", "lima_jax.curate", "--source=stackexchange", f"--output={out}", "--title_ratio=0"]
    r = subprocess.run([sys.executable, "-X", "importtime", *args[1:], f"--input={dumps_dir / 'math.stackexchange.com.7z'}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "py7zr" in imported and "jax" not in imported  # curating needs no accelerator stack
    assert [json.loads(line)["meta"]["question_id"] for line in out.read_text().splitlines()] == [1, 8, 9]
    assert "wrote 3 records" in r.stderr and "first_person" in r.stderr
    r = subprocess.run([*args, "--overwrite", f"--input={dumps_dir / 'nothing.7z'}"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {dumps_dir / 'nothing.7z'}: no such file or folder"]


def test_a_file_that_is_not_a_7z_archive_is_an_error_naming_it(tmp_path):
    (tmp_path / "math.stackexchange.com.7z").write_bytes(b"<posts></posts>")
    with pytest.raises(LimaError, match=r"math.stackexchange.com.7z: not a 7z archive"):
        with dumps.posts_xml(str(tmp_path / "math.stackexchange.com.7z")) as rows:
            list(rows)
