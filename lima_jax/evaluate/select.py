"""Pick a checkpoint the way LIMA did: per epoch, the dev loss and the judged quality of dev answers.

    python -m lima_jax.evaluate.select --workdir=runs/lima-65b --out_dir=select/ \
        [--epochs=5-10] [--reference=dev_reference.jsonl --judge_url=... --judge_model=...]

The dev prompts are the ones the run evaluated on (`<workdir>/dev.jsonl`); see
`lima_jax.evaluate.selection` for what is reported.
"""
from __future__ import annotations

import json

from absl import flags

from lima_jax.cli import define_sampling_flags, no_arguments, run, say
from lima_jax.errors import LimaError
from lima_jax.evaluate import judging, selection
from lima_jax.evaluate.responses import read_responses
from lima_jax.inference.sampler import SamplingParams
from lima_jax.storage.paths import user_path

_WORKDIR = flags.DEFINE_string("workdir", None, "the training run's workdir")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "where select.md, select.png and the dev responses go")
_EPOCHS = flags.DEFINE_string("epochs", "", "a range of epochs to consider, e.g. 5-10 (default: all)")
_REFERENCE = flags.DEFINE_string("reference", None, "a fixed reference's responses to the dev prompts (JSONL); with a judge")
_SAMPLING = define_sampling_flags()
_JUDGE = judging.define_judge_flags()


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not _WORKDIR.value or not _OUT_DIR.value:
        raise LimaError("--workdir and --out_dir are required")
    workdir, out_dir = user_path(_WORKDIR.value), user_path(_OUT_DIR.value)
    lo, hi = selection.parse_epochs(_EPOCHS.value)
    rows = [r for r in selection.epoch_checkpoints(workdir) if lo <= r["epoch"] <= hi]
    if not rows:
        raise LimaError(f"--epochs={_EPOCHS.value}: no epoch checkpoint in that range")
    out_dir.mkdir(parents=True, exist_ok=True)
    if _REFERENCE.value:
        cache = judging.JudgmentCache(out_dir / "judgments.jsonl")
        selection.judge_epochs(rows, selection.dev_prompts(workdir), read_responses(_REFERENCE.value), _JUDGE.judge(),
                               cache, out_dir, SamplingParams(**_SAMPLING.values()), _SAMPLING.seed.value)
    elif _JUDGE.judge_url.value or _JUDGE.judge_checkpoint.value:
        raise LimaError("judging needs --reference: a fixed system's responses to the dev prompts")
    say(selection.write_table(rows, out_dir / "select.md"))
    selection.plot(rows, out_dir / "select.png")
    print(json.dumps([{k: v for k, v in r.items() if k != "checkpoint"} for r in rows]))


if __name__ == "__main__":
    run(main)
