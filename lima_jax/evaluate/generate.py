"""Responses from a checkpoint for a prompt set, as the response file judging reads.

    python -m lima_jax.evaluate.generate --checkpoint=runs/lima-65b --prompts=lima/test.jsonl \
        --output=responses/lima-65b.jsonl [--generator=lima-65b] [--batch_size=16]

Prompts: any JSONL of conversations (LIMA's test file, a run's `<workdir>/dev.jsonl`, OpenAI
messages); a conversation that ends with an answer is asked up to its last user turn. Sampling
follows the paper (nucleus p 0.9, temperature 0.7, repetition penalty 1.2) unless the flags say
otherwise. Each batch is appended and flushed as soon as it is done, so an interrupted run continues
where it stopped: prompts already in the output file are not generated again. Every path may be
`gs://`.

A model too big for one host answers from the slice it trained on: every host runs the same line
with `--mesh` over all their devices (e.g. `--mesh=fsdp=-1`; the distributed flags are `train`'s) and
the same `--prompts`; process 0 alone reads and writes `--output`.
"""
from __future__ import annotations

from absl import flags

from lima_jax.cli import define_distributed_flags, define_mesh_flag, define_sampling_flags, no_arguments, run, say
from lima_jax.data.records import read_conversations
from lima_jax.errors import LimaError
from lima_jax.evaluate.responses import generate_responses
from lima_jax.inference.generator import Generator, parse_mesh, prompt_turns
from lima_jax.inference.sampler import SamplingParams
from lima_jax.storage.paths import check_writable, user_path

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a checkpoint, a step directory, or a run's workdir")
_PROMPTS = flags.DEFINE_string("prompts", None, "JSONL of conversations to answer")
_OUTPUT = flags.DEFINE_string("output", None, "the response file (JSONL); an existing one is continued")
_GENERATOR = flags.DEFINE_string("generator", None, "the system's name in the response file (default: the checkpoint's folder name)")
_BATCH = flags.DEFINE_integer("batch_size", 8, "prompts sampled together")
_SAMPLING = define_sampling_flags()
_MESH = define_mesh_flag()
_DISTRIBUTED = define_distributed_flags()


def main(argv: list[str]) -> None:
    no_arguments(argv)
    for flag in (_CHECKPOINT, _PROMPTS, _OUTPUT):
        if not flag.value:
            raise LimaError(f"--{flag.name} is required")
    if _BATCH.value < 1:
        raise LimaError(f"--batch_size must be positive, got {_BATCH.value}")
    params = SamplingParams(**_SAMPLING.values())
    params.check()
    records, _ = read_conversations(_PROMPTS.value)
    prompts = [prompt_turns(r["conversations"]) for r in records]
    output = user_path(_OUTPUT.value)
    check_writable(output.parent, "--output")  # before the checkpoint is loaded and the sampler compiled
    name = _GENERATOR.value or user_path(_CHECKPOINT.value).name
    _DISTRIBUTED.start()
    generator = Generator(_CHECKPOINT.value, parse_mesh(_MESH.value))
    count = generate_responses(generator, prompts, output, name, params, _SAMPLING.seed.value,
                               _BATCH.value, progress=say)
    say(f"wrote {count} new responses to {_OUTPUT.value}")


if __name__ == "__main__":
    run(main)
