r"""Pick a checkpoint the way LIMA did: per epoch, the dev loss and the judged quality of dev answers.

    python -m lima_jax.evaluate.select --workdir=runs/lima-65b --out_dir=select/ \
        [--epochs=5-10] [--reference=dev_reference.jsonl] [--likert] [--judge_url=... --judge_model=...]

With a judge, `--reference` judges each epoch's dev answers against a fixed system's and `--likert`
scores them 1-6 (LIMA's Figure 9: dev perplexity and judged quality on two axes); either or both.

The dev prompts are the ones the run evaluated on (`<workdir>/dev.jsonl`); see
`lima_jax.evaluate.epochs` for what is reported.

On the slice that trained (every host runs the same line with `--mesh` over all their devices and
`train`'s distributed flags), every host takes part in generating each epoch's dev answers; then
process 0 alone judges them and writes `--out_dir`, while the others wait at exit.
"""
from __future__ import annotations

from absl import flags

from lima_jax.cli import (check_exists, define_distributed_flags, define_mesh_flag, define_sampling_flags, no_arguments,
                          run)
from lima_jax.errors import LimaError
from lima_jax.evaluate.cli import define_judge_flags, parse_epochs
from lima_jax.inference import hosts
from lima_jax.storage.paths import user_path

_WORKDIR = flags.DEFINE_string("workdir", None, "the training run's workdir")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "where select.md, select.png and the dev responses go")
_EPOCHS = flags.DEFINE_string("epochs", "", "a range of epochs to consider, e.g. 5-10 (default: all)")
_REFERENCE = flags.DEFINE_string("reference", None, "a fixed reference's responses to the dev prompts (JSONL); with a judge")
_LIKERT = flags.DEFINE_bool("likert", False, "score each epoch's dev answers 1-6 with the Likert judge (Appendix D); "
                            "with a judge")
_SAMPLING = define_sampling_flags()
_JUDGE = define_judge_flags()
_MESH = define_mesh_flag()
_DISTRIBUTED = define_distributed_flags()
WAIT_FOR_JUDGING_S = 24 * 3600  # the other hosts wait at exit while process 0 judges (JAX's default: 5 minutes)


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not _WORKDIR.value or not _OUT_DIR.value:
        raise LimaError("--workdir and --out_dir are required")
    check_exists(_WORKDIR.value, "--workdir")
    # The input is checked: now the library, which imports JAX (the generator).
    from lima_jax.evaluate import epochs

    workdir, out_dir = user_path(_WORKDIR.value), user_path(_OUT_DIR.value)
    lo, hi = parse_epochs(_EPOCHS.value)
    rows = [r for r in epochs.epoch_checkpoints(workdir) if lo <= r["epoch"] <= hi]
    if not rows:
        raise LimaError(f"--epochs={_EPOCHS.value}: no epoch checkpoint in that range")
    has_judge = bool(_JUDGE.judge_url.value or _JUDGE.judge_checkpoint.value)
    if has_judge and not (_REFERENCE.value or _LIKERT.value):
        raise LimaError("judging needs --reference (a fixed system's responses to the dev prompts) or --likert")
    if _LIKERT.value and not has_judge:
        raise LimaError("--likert needs a judge: --judge_url and --judge_model, or --judge_checkpoint")
    judged = bool(_REFERENCE.value or _LIKERT.value)
    params = _SAMPLING.params()
    prompts = epochs.dev_prompts(workdir) if judged else []
    _DISTRIBUTED.start(shutdown_timeout_s=WAIT_FOR_JUDGING_S)
    if judged:
        epochs.judge_all_epochs(rows, prompts, out_dir, params, _SAMPLING.seed.value, _MESH.value, _JUDGE.judge,
                                   _REFERENCE.value, _LIKERT.value, remedy="use another --out_dir")
    if hosts.is_writer():
        print(epochs.write_selection(rows, out_dir))


if __name__ == "__main__":
    run(main)
