"""`python -m lima_jax.curate --source=stackexchange_dialogues`: comment chains of real-format dumps
(Posts.xml + Comments.xml, in a folder or a site's .7z) -> LIMA multi-turn records, one question per rule."""
import json
import subprocess
import sys

import py7zr
import pytest
from support.stackexchange import posts_xml, prose, row

from lima_jax.curate.pipeline import Options, curate
from lima_jax.data.records import read_conversations
from lima_jax.errors import LimaError

ASKER, ANSWERER, OTHER = 7, 9, 5
FOLLOW_UP = "@bob Why does salt raise the boiling point at all?"
REPLY = "@alice Dissolved salt lowers the vapour pressure, so the water must get hotter to boil."
REPLY_MORE = "It is a small effect in a cooking pot."
SECOND = "How much salt would make a [visible](https://example.com/salt) difference?"
SECOND_REPLY = "About 58 grams per litre raise it by half a degree, which no cook notices. https://example.com/x"


def q(qid, score=20, owner=ASKER, accepted=None, title=None):
    extra = {"AcceptedAnswerId": accepted} if accepted else {}
    return row(Id=qid, PostTypeId=1, Score=score, Title=title or f"Question {qid} about boiling?",
               Body=f"<p>Body of question {qid}.</p>", OwnerUserId=owner, ContentLicense="CC BY-SA 4.0", **extra)


def a(aid, parent, score=15, owner=ANSWERER, chars=600, body=None):
    return row(Id=aid, PostTypeId=2, ParentId=parent, Score=score, Body=body or f"<p>{prose(chars)}</p>",
               OwnerUserId=owner, ContentLicense="CC BY-SA 4.0")


_clock = iter(range(10**6))


def c(post, user, said):
    n = next(_clock)
    return row(Id=n + 1, PostId=post, Score=0, Text=said, UserId=user,
               CreationDate=f"2020-01-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000")


def comments_xml(rows):
    return '<?xml version="1.0" encoding="utf-8"?>\n<comments>\n' + "".join(rows) + "</comments>\n"


def thread(post, *pairs):
    """Comments in time order: (user, text) pairs."""
    return [c(post, user, said) for user, said in pairs]


COOKING_POSTS = [
    q(1, 30, accepted=12), a(11, 1, score=50, owner=8), a(12, 1, score=5),  # the accepted answer, not the top one
    q(2, accepted=21), a(21, 2, owner=ASKER),  # self_answer
    q(3), a(31, 3),  # follow_up_not_a_question
    q(4), a(41, 4, score=9),  # no_answer (with the filters)
    q(5), a(51, 5),  # reply_too_short
    q(6), a(61, 6),  # reply_first_person
    q(7), a(71, 7),  # no_follow_up
    q(8, 10), a(81, 8),  # two exchanges, the second cut
    q(9), a(91, 9, body=f"<p>{prose(600)} I tried it.</p>"),  # first_person (answer)
    q(10), a(101, 10, chars=300),  # answer_too_short
]
COOKING_COMMENTS = [
    *thread(12, (ANSWERER, "Edit: added a note about altitude."), (ASKER, FOLLOW_UP), (OTHER, "Good question!"),
            (ANSWERER, REPLY), (ANSWERER, REPLY_MORE), (ASKER, SECOND), (ANSWERER, SECOND_REPLY), (ASKER, "Thanks!")),
    *thread(11, (ASKER, "Does this hold for oil too?"), (8, "Oil does not boil in a kitchen; it smokes first, long before.")),
    *thread(31, (ASKER, "Thanks, that helps."), (ANSWERER, "Glad it helped; the same holds for any dissolved solid.")),
    *thread(51, (ASKER, "Is this true at sea level?"), (ANSWERER, "Yes.")),
    *thread(61, (ASKER, "Does the pan matter?"), (ANSWERER, "I think it depends on the pan you use, honestly, and the lid.")),
    *thread(81, (ASKER, "Does altitude change the cooking time?"), (ANSWERER, "Yes: water boils cooler up high, so food cooks slower."),
            (ASKER, "By how much?"), (ANSWERER, "A lot.")),
    *thread(91, (ASKER, "Why?"), (ANSWERER, "Because the pressure is lower up there, and so is the boiling point.")),
    *thread(101, (ASKER, "Why?"), (ANSWERER, "Because the pressure is lower up there, and so is the boiling point.")),
]
MATH_POSTS = [q(1, accepted=11, title="Why is 0.999... equal to 1?"), a(11, 1)]
MATH_COMMENTS = thread(11, (ASKER, "What about 0.888...?"), (ANSWERER, "That one equals 8/9, by the same argument with tenths."))


@pytest.fixture
def site(tmp_path):
    folder = tmp_path / "cooking.stackexchange.com"
    folder.mkdir()
    (folder / "Posts.xml").write_text(posts_xml(COOKING_POSTS), encoding="utf-8")
    (folder / "Comments.xml").write_text(comments_xml(COOKING_COMMENTS), encoding="utf-8")
    with py7zr.SevenZipFile(tmp_path / "math.stackexchange.com.7z", "w") as z:  # the tables in one archive
        z.writestr(comments_xml(MATH_COMMENTS), "Comments.xml")
        z.writestr(posts_xml(MATH_POSTS), "Posts.xml")
    return tmp_path


def run(site, name="out.jsonl", **kw):
    opts = dict(source="stackexchange_dialogues", inputs=(str(site / "cooking.stackexchange.com"),),
                output=str(site / name))
    opts.update(kw)
    report = curate(Options(**opts), say=lambda _: None)
    records, _ = read_conversations(site / name)  # the trainer's reader takes the file as it is
    return report, records, [json.loads(line) for line in (site / name).read_text().splitlines()]


def test_the_chain_follows_the_accepted_answer_and_alternates_the_asker_and_the_answerer(site):
    report, records, raw = run(site)
    by_question = {r["meta"]["question_id"]: r for r in raw}
    assert sorted(by_question) == [1, 8]
    first = by_question[1]
    assert first["source"] == "multi_turn" and first["meta"]["answer_id"] == 12 and first["meta"]["accepted"] is True
    assert first["conversations"] == [
        "Question 1 about boiling?\n\nBody of question 1.", prose(600),
        "Why does salt raise the boiling point at all?",  # the answerer's addendum before it is skipped
        "Dissolved salt lowers the vapour pressure, so the water must get hotter to boil.\n\n" + REPLY_MORE,
        "How much salt would make a visible difference?",  # the link's address removed
        "About 58 grams per litre raise it by half a degree, which no cook notices.",
    ]  # the other user's comment is left out, the last unanswered "Thanks!" too
    assert by_question[8]["conversations"][2:] == ["Does altitude change the cooking time?",
                                                   "Yes: water boils cooler up high, so food cooks slower."]
    assert by_question[8]["meta"]["exchanges"] == 1  # cut before the second exchange's short reply
    assert raw[0]["meta"]["question_id"] == 1  # more exchanges first
    assert [len(r["conversations"]) for r in records] == [6, 4]
    counts = json.loads((site / "out.jsonl.report.json").read_text())["total"]
    assert {k: v for k, v in counts.items() if v} == {
        "candidates": 10, "self_answer": 1, "follow_up_not_a_question": 1, "no_answer": 1, "reply_too_short": 1,
        "reply_first_person": 1, "no_follow_up": 1, "first_person": 1, "answer_too_short": 1, "written": 2}


def test_without_filters_every_alternating_chain_is_kept(site):
    _, _, raw = run(site, filters="none")
    kept = {r["meta"]["question_id"]: r["meta"]["exchanges"] for r in raw}
    # 2: self-answered; 4 and 7: no comments by the asker under the answer.
    assert kept == {1: 2, 3: 1, 5: 1, 6: 1, 8: 2, 9: 1, 10: 1}


def test_a_sites_7z_is_read_for_both_tables_and_sampling_takes_num_examples(site):
    _, _, raw = run(site, inputs=(str(site / "math.stackexchange.com.7z"), str(site / "cooking.stackexchange.com")),
                    num_examples=2)
    assert len(raw) == 2 and {r["meta"]["site"] for r in raw} == {"math.stackexchange.com", "cooking.stackexchange.com"}
    math = next(r for r in raw if r["meta"]["site"] == "math.stackexchange.com")
    assert math["conversations"][2:] == ["What about 0.888...?", "That one equals 8/9, by the same argument with tenths."]


def test_a_site_without_comments_is_an_error_naming_the_table(site):
    (site / "cooking.stackexchange.com" / "Comments.xml").unlink()
    with pytest.raises(LimaError, match="cooking.stackexchange.com: no Comments.xml in this folder"):
        run(site)


def test_the_command(site):
    r = subprocess.run([sys.executable, "-m", "lima_jax.curate", "--source=stackexchange_dialogues",
                        f"--input={site / 'cooking.stackexchange.com'}", f"--output={site / 'cmd.jsonl'}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((site / "cmd.jsonl").read_text().splitlines()) == 2 and "wrote 2 records" in r.stderr + r.stdout
