"""`lima_jax.curate --source=reddit` on Pushshift dumps in their real format: zstandard-compressed
NDJSON (submissions and comments, mixed with other subreddits); one submission per rule."""
import json

import pytest
import zstandard

from lima_jax.curate import dumps
from lima_jax.curate.pipeline import Options, curate
from lima_jax.data.records import read_conversations
from lima_jax.errors import LimaError

STORY = "The egg cracked at midnight, and the tides forgot which way to go.\n\nBy morning the sky was full of feathers."


def submission(sid, title, score, subreddit="WritingPrompts", selftext="", **kw):
    return {"id": sid, "title": title, "selftext": selftext, "score": score, "subreddit": subreddit, "over_18": False,
            "permalink": f"/r/{subreddit}/comments/{sid}/x/", "created_utc": 1546300800, **kw}


def comment(cid, sid, score, body, parent=None, author="writer", **kw):
    return {"id": cid, "body": body, "score": score, "link_id": f"t3_{sid}", "parent_id": parent or f"t3_{sid}",
            "author": author, "subreddit": "WritingPrompts", **kw}


SUBMISSIONS = [
    submission("aa1", "[WP] The moon is actually a giant egg.", 500),
    submission("aa2", "[OT] Meta: the new rules", 400),
    submission("aa3", "[WP] A prompt that was removed", 300, selftext="[removed]"),
    submission("aa4", "[WP] Something for adults", 250, over_18=True),
    submission("aa5", "[WP] Nobody liked the stories", 200),
    submission("aa6", "[WP] The moon is actually a giant EGG!", 100),  # the words of aa1's prompt
    submission("bb1", "A cat", 9000, subreddit="pics"),
    submission("cc1", "What is the best advice you have ever received?", 1000, subreddit="AskReddit"),
    submission("cc2", "Long story, need advice", 900, subreddit="AskReddit", selftext="So here is what happened..."),
    submission("cc3", "[deleted]", 800, subreddit="AskReddit", selftext="[deleted]"),
    submission("cc4", "An adult question?", 700, subreddit="AskReddit", over_18=True),
]
COMMENTS = [
    comment("c01", "aa1", 1000, "**Reminder:** stories only.", author="AutoModerator", stickied=True),
    comment("c02", "aa1", 120, STORY.replace("forgot", "[forgot](https://example.com/tides)") + "\n\nEdit: thanks for the gold!"),
    comment("c03", "aa1", 80, "A shorter story that scored less."),
    comment("c04", "aa1", 999, "A reply, not a response.", parent="t1_c02"),
    comment("c05", "aa6", 50, "Another story about the egg moon."),
    comment("c06", "aa5", 5, "A story nobody upvoted."),
    comment("c07", "aa3", 70, "A story under a removed prompt."),
    comment("c08", "aa4", 70, "A story for adults."),
]


def write_zst(path, objects):
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=3).stream_writer(f) as w:
        for obj in objects:
            w.write((json.dumps(obj) + "\n").encode())
    return str(path)


@pytest.fixture
def files(tmp_path):
    # monthly dumps hold every subreddit; the comments file may come first
    return write_zst(tmp_path / "RC_2019-01.zst", COMMENTS), write_zst(tmp_path / "RS_2019-01.zst", SUBMISSIONS)


def run(tmp_path, files, name="r.jsonl", **kw):
    report = curate(Options(source="reddit", inputs=tuple(files), output=str(tmp_path / name), **kw), say=lambda _: None)
    records, _ = read_conversations(tmp_path / name)
    raw = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    return report, records, raw


def test_writing_prompts_pair_each_prompt_with_its_top_scored_top_level_comment(tmp_path, files):
    report, records, raw = run(tmp_path, files)
    assert [r["conversations"] for r in records] == [["The moon is actually a giant egg.", STORY]]
    assert raw[0]["source"] == "writingprompts"
    assert raw[0]["meta"] == {"subreddit": "WritingPrompts", "submission_id": "aa1", "submission_score": 500,
                              "url": "https://www.reddit.com/r/WritingPrompts/comments/aa1/x/", "tag": "WP",
                              "comment_id": "c02", "comment_score": 120,
                              "comment_url": "https://www.reddit.com/r/WritingPrompts/comments/aa1/x/c02/", "author": "writer"}
    assert {k: v for k, v in report.as_json()["per_stratum"]["r/WritingPrompts"].items() if v} == {
        "candidates": 6, "not_a_prompt": 1, "removed": 1, "nsfw": 1, "no_response": 1, "duplicate": 1, "written": 1}


def test_without_filters_a_low_scored_response_counts(tmp_path, files):
    _, records, _ = run(tmp_path, files, filters="none")
    assert [r["conversations"][0] for r in records] == ["The moon is actually a giant egg.", "Nobody liked the stories"]


def test_ask_reddit_titles_without_a_body_become_prompt_only_test_records(tmp_path, files):
    report, records, raw = run(tmp_path, files, subreddit="askreddit")
    assert [r["conversations"] for r in records] == [["What is the best advice you have ever received?"]]
    assert raw[0]["source"] == "askreddit" and raw[0]["meta"]["submission_id"] == "cc1"
    assert {k: v for k, v in report.as_json()["per_stratum"]["r/AskReddit"].items() if v} == {
        "candidates": 4, "has_body": 1, "removed": 1, "nsfw": 1, "written": 1}


def test_num_examples_takes_the_best_scored_prompts(tmp_path, files):
    _, records, _ = run(tmp_path, files, filters="none", num_examples=1)
    assert [r["conversations"][0] for r in records] == ["The moon is actually a giant egg."]


def test_a_line_that_is_not_json_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "RS_bad.zst"
    with open(path, "wb") as f, zstandard.ZstdCompressor().stream_writer(f) as w:
        w.write(b'{"id": "a", "title": "t", "subreddit": "WritingPrompts"}\n{"id": \n')
    with pytest.raises(LimaError, match=r"RS_bad.zst:2: not valid JSON"):
        list(dumps.ndjson_lines(str(path)))


def test_a_file_that_is_not_zstandard_is_an_error_naming_it(tmp_path):
    (tmp_path / "plain.zst").write_text('{"id": "a"}\n')
    with pytest.raises(LimaError, match=r"plain.zst:1: not zstandard data"):
        list(dumps.ndjson_lines(str(tmp_path / "plain.zst")))
