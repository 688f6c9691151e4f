"""Multi-turn dialogues (LIMA §6): played with the model's own answers in context, each turn rated with
the conversation so far, the Figure-7 counts and "failed within 3 interactions", all resumable."""
from __future__ import annotations

import json
import re

import pytest
from support.judges import Reply, Request, ScriptedServer, fast_judge
from support.commands import call_command

from lima_jax.errors import LimaError
from lima_jax.evaluate.protocols import dialogue
from lima_jax.evaluate.cli import parse_checkpoints
from lima_jax.evaluate.protocols.dialogue import TranscriptSink, play, rate, read_dialogues, unplayed
from lima_jax.evaluate.judge.cache import JudgmentCache
from lima_jax.evaluate.answers.formats import read_responses
from lima_jax.inference.generator import Generator
from lima_jax.inference.sampler import SamplingParams
from lima_jax.storage.paths import Path

# The scripted judge rates a turn by the marker of the user turn it answers, and Fail for an answer saying "bad".
DIALOGUES = [
    {"id": "fails-third", "turns": ["Plan a trip. [E]", "Cheaper? [P]", "Add a museum. [F]", "Thanks! [E]"]},
    {"id": "fails-fourth", "turns": ["Write a poem. [E]", "Shorter. [E]", "Rhyme it. [E]", "In French. [F]"]},
    {"conversations": ["Explain RoPE. [P]", "an answer from the training chain", "And ALiBi? [E]"]},
]
SHORT = [{"id": "a", "turns": ["Hi", "Why", "Ok"]}, {"id": "b", "turns": ["Yo", "So"]}]  # few compiled shapes


def write_dialogues(path, dialogues=DIALOGUES):
    path.write_text("".join(json.dumps(d) + "\n" for d in dialogues))
    return str(path)


def test_the_dialogues_file_and_its_errors(tmp_path):
    script = read_dialogues(write_dialogues(tmp_path / "d.jsonl"))
    assert [d.dialogue_id for d in script[:2]] == ["fails-third", "fails-fourth"]
    assert script[2].asks == ["Explain RoPE. [P]", "And ALiBi? [E]"]  # a LIMA record: its user turns
    assert len({d.turn_id(k) for d in script for k in range(len(d.asks))}) == 10
    for lines, why in [
        (['{"id": "a", "turns": ["x"]}', '{"id": "a", "turns": ["y"]}'], "d.jsonl:2: dialogue id 'a' already appears on line 1"),
        (['{"id": "a", "turns": ["x"]}', '{"id": "b", "turns": ["x"]}'], "d.jsonl:2: the same user turns"),
        (['{"id": "a", "turns": []}'], "d.jsonl:1: 'turns' must be a non-empty list"),
        (['{"id": "a", "prompt": ["x"]}'], "d.jsonl:1: missing 'turns'"),
        (['{"id": "a/b", "turns": ["x"]}'], "d.jsonl:1: 'id' must be a non-empty string without '/'"),
    ]:
        (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
        with pytest.raises(LimaError, match=re.escape(why)):
            read_dialogues(str(tmp_path / "d.jsonl"))


def test_checkpoint_names(tmp_path):
    assert parse_checkpoints(["zero-shot=runs/a", "runs/dialogue", "gs://b/run3"]) == [
        ("zero-shot", "runs/a"), ("dialogue", "runs/dialogue"), ("run3", "gs://b/run3")]
    with pytest.raises(LimaError, match="two checkpoints named 'a'"):
        parse_checkpoints(["x/a", "y/a"])


def test_play_keeps_the_models_own_answers_in_context_batched_and_resumes(judge_ckpt, tmp_path):
    calls: list[list[list[int]]] = []

    class Recording(Generator):  # remembers every batch of prompts it is given
        def __call__(self, prompts, params, seed):
            calls.append(prompts)
            return super().__call__(prompts, params, seed)

    script = read_dialogues(write_dialogues(tmp_path / "d.jsonl", SHORT))
    generator = Recording(str(judge_ckpt))
    transcript = Path(tmp_path / "t.jsonl")
    params = SamplingParams(max_new_tokens=3)
    assert play(generator, script, transcript, "m", params, seed=0, batch_size=2) == 5
    assert [len(c) for c in calls] == [2, 2, 1]  # turn by turn, both dialogues together while both go on
    lines = [json.loads(line) for line in transcript.read_text().splitlines()]
    first = [r for r in lines if r["dialogue"] == "a"]
    assert [r["turn"] for r in first] == [1, 2, 3]
    answers = [r["output"] for r in first]
    tok = generator.tokenizer
    assert first[2]["prompt"] == ["Hi", answers[0], "Why", answers[1], "Ok"]
    assert calls[2][0] == tok.encode_prompt(first[2]["prompt"])  # the third turn saw the model's own answers

    # Resumed: a lost line is played again, and nothing else.
    lost = lines[2]
    transcript.write_text("".join(json.dumps(r) + "\n" for r in lines if r is not lost))
    assert unplayed(script, transcript, "m") == 1
    calls.clear()
    assert play(generator, script, transcript, "m", params, seed=0, batch_size=2) == 1
    assert calls == [[tok.encode_prompt(lost["prompt"])]]
    assert read_responses(transcript)[lost["id"]]["output"] == lost["output"]  # the same sample again
    assert unplayed(script, transcript, "m") == 0
    with pytest.raises(LimaError, match="holds responses of 'm', not 'other'"):
        unplayed(script, transcript, "other")


def rating_script(request: Request) -> Reply:
    text = request.user_text
    response = text.split("<<<RESPONSE>>>\n", 1)[1].split("\n<<<END OF RESPONSE>>>", 1)[0]
    if "bad" in response:
        return Reply("It ignores the conversation.\nVerdict: Fail")
    marker = re.findall(r"\[([EPF])\]", text.split("<<<RESPONSE>>>", 1)[0])[-1]  # the last user turn's
    return Reply("Reasons.\nVerdict: " + {"E": "Excellent", "P": "Pass", "F": "Fail"}[marker])


def write_transcript(path, script, name, bad=()):
    """A transcript as `play` writes it; answers listed in `bad` (dialogue, turn) say "bad"."""
    sink = TranscriptSink(Path(path), name)
    sink.answered(script)
    sink.add([(d, [("bad answer" if (d.dialogue_id, k + 1) in bad else f"answer {k + 1}") for k in range(len(d.asks))], 0)
              for d in script])


def test_each_turn_is_rated_in_context_and_the_report_counts_them(tmp_path):
    script = read_dialogues(write_dialogues(tmp_path / "d.jsonl"))
    third = script[2].dialogue_id
    write_transcript(tmp_path / "zero.jsonl", script, "zero-shot", bad={("fails-fourth", 2), (third, 1)})
    write_transcript(tmp_path / "trained.jsonl", script, "trained")
    cache = JudgmentCache(tmp_path / "j.jsonl")
    with ScriptedServer(rating_script) as server:
        judge = fast_judge(server.url)
        zero = rate(script, Path(tmp_path / "zero.jsonl"), "zero-shot", judge, cache, progress=False)
        trained = rate(script, Path(tmp_path / "trained.jsonl"), "trained", judge, cache, progress=False)
        # 15, not 20: a conversation both transcripts hold word for word (all of "fails-third", the first turn
        # of "fails-fourth") is the same question, judged once.
        assert server.hits == 15
        # Turn 3 of the first dialogue: the whole conversation before it, and the dialogue rule, reach the judge.
        asked = [r.user_text for r in server.requests if "Add a museum. [F]" in r.user_text and "Thanks!" not in r.user_text]
        assert len(asked) == 1 and "User: Plan a trip. [E]\nAssistant: answer 1\nUser: Cheaper? [P]" in asked[0]
        assert "must also follow the conversation so far" in asked[0]
        first_turns = [r.user_text for r in server.requests if "<<<REQUEST>>>" in r.user_text]
        assert len(first_turns) == 4 and "conversation so far" not in first_turns[0]
        again = rate(script, Path(tmp_path / "zero.jsonl"), "zero-shot", judge, JudgmentCache(tmp_path / "j.jsonl"),
                     progress=False)
        assert server.hits == 15 and again.ratings == zero.ratings and again.stats.asked == 0  # all cached
    assert zero.ratings == {"fails-third": ["Excellent", "Pass", "Fail", "Excellent"],
                            "fails-fourth": ["Excellent", "Fail", "Excellent", "Fail"], third: ["Fail", "Excellent"]}
    assert trained.ratings["fails-fourth"] == ["Excellent", "Excellent", "Excellent", "Fail"]

    report = dialogue.write(str(tmp_path / "out"), [zero, trained], samples=50)
    z, t = report["checkpoints"]
    assert (z["overall"]["counts"], z["failed_within_3"]) == ({"Fail": 4, "Pass": 1, "Excellent": 5}, 3)
    assert (t["overall"]["counts"], t["failed_within_3"]) == ({"Fail": 2, "Pass": 2, "Excellent": 6}, 1)
    assert z["overall"]["pct"]["Fail"] == 40.0 and z["turns"] == 10 and z["conversations"] == 3
    assert z["per_turn"]["1"]["counts"] == {"Fail": 1, "Pass": 0, "Excellent": 2}
    assert z["per_turn"]["4"]["counts"] == {"Fail": 1, "Pass": 0, "Excellent": 1}  # two dialogues reach turn 4
    assert report["compared_with_first"] == {"trained": {"better": 2, "tied": 1, "worse": 0, "unrated": 0}}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| zero-shot | 3 | 10 | 5 (50.0%) | 1 (10.0%) | 4 (40.0%) | 0 | 3 of 3 |" in md
    assert "better in 2, tied in 1, worse in 0" in md
    assert (tmp_path / "out" / "dialogue_ratings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fails_within_three():
    assert dialogue.fails_within(["Pass", "Excellent", "Fail", "Fail"]) is True
    assert dialogue.fails_within(["Pass", "Excellent", "Pass", "Fail"]) is False
    assert dialogue.fails_within(["Pass", "failed", "Pass"]) is None  # an unrated turn: unknown
    assert dialogue.fails_within(["Pass"]) is False


def test_the_command_compares_two_checkpoints_with_a_local_judge_and_resumes(judge_ckpt, tmp_path):
    dialogues = write_dialogues(tmp_path / "d.jsonl", [{"id": "a", "turns": ["Hi", "Why"]}, {"id": "b", "turns": ["Yo", "So"]}])
    args = [f"--dialogues={dialogues}", f"--out_dir={tmp_path / 'out'}", f"--checkpoint=zero-shot={judge_ckpt}",
            f"--checkpoints=trained={judge_ckpt}", f"--judge_checkpoint={judge_ckpt}", "--max_new_tokens=3",
            "--batch_size=2", "--workers=1"]
    r = call_command("lima_jax.evaluate.dialogue", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for s in report["checkpoints"]:
        assert sum(s["overall"]["counts"].values()) == 4
        assert len(read_responses(tmp_path / "out" / "transcripts" / f"{s['name']}.jsonl")) == 4
    # The same weights and seed sample the same transcript: its conversations are judged once.
    assert [s["asked_now"] for s in report["checkpoints"]] == [4, 0]
    assert len((tmp_path / "out" / "judgments.jsonl").read_text().splitlines()) == 4
    r = call_command("lima_jax.evaluate.dialogue", *args)  # nothing to generate, nothing to judge
    assert r.returncode == 0, r.stderr[-2000:]
    assert "zero-shot: " in r.stderr and "is complete" in r.stderr
    again = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["asked_now"] for s in again["checkpoints"]] == [0, 0]
    assert [s["dialogues"] for s in again["checkpoints"]] == [s["dialogues"] for s in report["checkpoints"]]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(summary) == {"zero-shot", "trained"}
    r = call_command("lima_jax.evaluate.dialogue", f"--dialogues={dialogues}", f"--out_dir={tmp_path / 'o2'}",
                f"--checkpoint={judge_ckpt}")
    assert r.returncode == 2 and "--judge_url and --judge_model" in r.stderr
