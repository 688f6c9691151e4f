r"""Responses from a checkpoint for a prompt set, as the response file judging reads, or as AlpacaEval's
model outputs or MT-Bench's answers.

    python -m lima_jax.evaluate.generate --checkpoint=runs/lima-65b --prompts=lima/test.jsonl \
        --output=responses/lima-65b.jsonl [--generator=lima-65b] [--batch_size=16]
    python -m lima_jax.evaluate.generate --checkpoint=runs/lima-65b --prompts=alpaca_eval.json \
        --output=lima-65b/model_outputs.json --output_format=alpaca_eval
    python -m lima_jax.evaluate.generate --checkpoint=runs/lima-65b --prompts=mt_bench/question.jsonl \
        --output=mt_bench/model_answer/lima-65b.jsonl --output_format=mt_bench

Prompts, told apart by their content: any JSONL of conversations (LIMA's test file, a run's
`<workdir>/dev.jsonl`, OpenAI messages), a conversation that ends with an answer asked up to its
last user turn; AlpacaEval's evaluation set (a JSON list of `instruction`s); MT-Bench's
`question.jsonl`, each later turn asked after the model's own answer to the one before.

Outputs (`--output_format`): `responses` (the default; JSONL, one record per turn asked, what
`lima_jax.evaluate.pairwise` and `absolute` read), `alpaca_eval` (what `alpaca_eval --model_outputs`
reads), `mt_bench` (FastChat's `model_answer/<model>.jsonl`). The format is chosen here rather than
converted afterwards because a run is resumed from its output: each batch is written as soon as it is
done, and an interrupted run continues where it stopped, asking only what the output file lacks.
An output of another kind or another `--generator` is refused, and so is one generated from another
checkpoint (or step) or with other sampling flags, as `<output>.generation.json` records them beside
it (an output from before that record is continued and then recorded); `--overwrite` starts afresh.

Sampling follows the paper (nucleus p 0.9, temperature 0.7, repetition penalty 1.2) unless the flags
say otherwise, for every prompt set: MT-Bench's per-category temperatures are FastChat's choice,
applied when FastChat asks `lima_jax.serve` (see the README). Every path may be `gs://`.

A model too big for one host answers from the slice it trained on: every host runs the same line
with `--mesh` over all their devices (e.g. `--mesh=fsdp=-1`; the distributed flags are `train`'s) and
the same `--prompts`; process 0 alone reads and writes `--output`.
"""
from __future__ import annotations

from absl import flags

from lima_jax.cli import (check_exists, define_distributed_flags, define_dtype_flag, define_mesh_flag, define_sampling_flags, no_arguments, run)
from lima_jax.log import say
from lima_jax.errors import LimaError
from lima_jax.evaluate.answers.formats import FORMATS, make_sink, read_prompts
from lima_jax.evaluate.answers.generation import generate_file
from lima_jax.storage.paths import check_writable, user_path

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a checkpoint, a step directory, or a run's workdir")
_PROMPTS = flags.DEFINE_string("prompts", None, "JSONL of conversations, AlpacaEval's evaluation set (JSON) or "
                               "MT-Bench's question.jsonl")
_OUTPUT = flags.DEFINE_string("output", None, "the output file; an existing one of the same kind and generator is continued")
_OUTPUT_FORMAT = flags.DEFINE_enum("output_format", "responses", FORMATS, "responses (JSONL, what judging reads), "
                                   "alpaca_eval (model_outputs.json) or mt_bench (FastChat's answer JSONL)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing --output instead of continuing it")
_GENERATOR = flags.DEFINE_string("generator", None, "the system's name in the response file (default: the checkpoint's folder name)")
_BATCH = flags.DEFINE_integer("batch_size", 8, "prompts sampled together")
_SAMPLING = define_sampling_flags()
_MESH = define_mesh_flag()
_DTYPE = define_dtype_flag()
_DISTRIBUTED = define_distributed_flags()


def main(argv: list[str]) -> None:
    no_arguments(argv)
    for flag in (_CHECKPOINT, _PROMPTS, _OUTPUT):
        if not flag.value:
            raise LimaError(f"--{flag.name} is required")
    if _BATCH.value < 1:
        raise LimaError(f"--batch_size must be positive, got {_BATCH.value}")
    params = _SAMPLING.params()
    questions, kind = read_prompts(_PROMPTS.value)
    output = user_path(_OUTPUT.value)
    check_writable(output.parent, "--output")  # before the checkpoint is loaded and the sampler compiled
    name = _GENERATOR.value or user_path(_CHECKPOINT.value).name
    sink = make_sink(_OUTPUT_FORMAT.value, output, name, fresh=_OVERWRITE.value)
    if not _DISTRIBUTED.joins_others:  # with several processes only process 0 reads it, below
        sink.answered(questions)  # the output's kind and generator, before the checkpoint is even looked for
    check_exists(_CHECKPOINT.value, "checkpoint")
    _DISTRIBUTED.start()
    count = generate_file(_CHECKPOINT.value, questions, sink, params, _SAMPLING.seed.value, _BATCH.value, _MESH.value,
                          _DTYPE.value, heading=f"{len(questions)} {kind} from {_PROMPTS.value}", progress=say)
    say(f"wrote {count} new responses to {_OUTPUT.value}")


if __name__ == "__main__":
    run(main)
