r"""Multi-turn dialogues, as in LIMA §6: scripted user turns played against each checkpoint (its own
answers kept in context), every assistant turn rated Fail / Pass / Excellent with the conversation
so far, and the Figure-7 distribution per checkpoint.

    python -m lima_jax.evaluate.dialogue --dialogues=dialogues.jsonl --out_dir=dialogue_eval \
        --checkpoint=zero-shot=runs/lima-65b --checkpoint=dialogue=runs/lima-65b-dialogue \
        --judge_url=https://api.openai.com/v1 --judge_model=gpt-4
    (or --checkpoints=zero-shot=runs/lima-65b,dialogue=runs/lima-65b-dialogue; NAME= is optional:
     the checkpoint's folder name by default)

The dialogues file: JSONL, `{"id": ..., "turns": [user turns]}` a line (`lima_jax.evaluate.protocols.dialogue`).
--out_dir receives transcripts/NAME.jsonl (one line per assistant turn), judgments.jsonl (the judgment
cache, unless --cache names another), report.md (also printed), report.json and dialogue_ratings.png.
A rerun resumes: turns a transcript holds are not generated again (a checkpoint whose transcript is
complete is not even loaded), judgments the cache holds are not asked again; the report is rewritten.
Sampling follows the paper (p 0.9, temperature 0.7, repetition penalty 1.2) unless the flags say otherwise.
"""
from __future__ import annotations

import json

from absl import flags

from lima_jax.cli import define_sampling_flags, no_arguments, run
from lima_jax.log import say
from lima_jax.errors import LimaError
from lima_jax.evaluate.cli import MAX_FAILURES, define_judge_flags, parse_checkpoints
from lima_jax.evaluate.judge.runner import stop_message
from lima_jax.evaluate.protocols import dialogue
from lima_jax.storage.paths import user_path

_DIALOGUES = flags.DEFINE_string("dialogues", None, "JSONL of dialogues: {\"id\", \"turns\": [user turns]} a line")
_CHECKPOINT = flags.DEFINE_multi_string("checkpoint", [], "[NAME=]PATH of a checkpoint, step or workdir; "
                                        "repeat it to compare (e.g. zero-shot, then dialogue-trained)")
_CHECKPOINTS = flags.DEFINE_list("checkpoints", [], "the same as a comma-separated list: [NAME=]PATH,[NAME=]PATH")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "transcripts, judgments and the report go here")
_BATCH = flags.DEFINE_integer("batch_size", 8, "dialogues played together (turn by turn)")
_SAMPLING = define_sampling_flags()
_JUDGE = define_judge_flags()


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not _DIALOGUES.value:
        raise LimaError("--dialogues is required (JSONL: {\"id\", \"turns\": [user turns]} a line)")
    if not _OUT_DIR.value:
        raise LimaError("--out_dir is required")
    checkpoints = parse_checkpoints(_CHECKPOINT.value + _CHECKPOINTS.value)
    if not checkpoints:
        raise LimaError("--checkpoint is required (repeat it, or use --checkpoints, to compare checkpoints)")
    if _BATCH.value < 1:
        raise LimaError(f"--batch_size must be positive, got {_BATCH.value}")
    params = _SAMPLING.params()
    if _JUDGE.out.value:
        raise LimaError("--out is not read here: report.json and report.md go to --out_dir")
    _JUDGE.check()
    max_failures = _JUDGE.max_failures()
    script = dialogue.read_dialogues(_DIALOGUES.value)
    out = user_path(_OUT_DIR.value)
    (out / "transcripts").mkdir(parents=True, exist_ok=True)
    cache = _JUDGE.cache(default=str(out / "judgments.jsonl"))
    say(f"{len(script)} dialogues, {sum(len(d.asks) for d in script)} user turns, from {_DIALOGUES.value}")
    dialogue.play_all(script, checkpoints, out, params, _SAMPLING.seed.value, _BATCH.value)
    judge = _JUDGE.judge()  # after generation: a local judge's weights are not in memory beside a model's
    rated = dialogue.rate_all(script, [name for name, _ in checkpoints], out, judge, cache,
                              workers=_JUDGE.workers.value, max_failures=max_failures)
    if rated[-1].stats.stopped:
        raise LimaError(stop_message(rated[-1].stats, max_failures, MAX_FAILURES))
    report = dialogue.write(str(out), rated)
    print((out / "report.md").read_text(encoding="utf-8"), flush=True)
    print(json.dumps({s["name"]: {"counts": s["overall"]["counts"], "failed_within_3": s["failed_within_3"],
                                  "conversations": s["conversations"]} for s in report["checkpoints"]}), flush=True)


if __name__ == "__main__":
    run(main)
