r"""Generate from a checkpoint, with LIMA's sampling defaults (nucleus p 0.9, temperature 0.7,
repetition penalty 1.2).

    python -m lima_jax.sample --checkpoint=runs/tiny --prompt="What is 3 plus 4?"
    python -m lima_jax.sample --checkpoint=CKPT --prompt_file=prompts.jsonl      # batched, JSONL out
    python -m lima_jax.sample --checkpoint=CKPT --prompt_ids=1,2,3 --temperature=0 \
        --max_new_tokens=20 --print_ids                                          # token for token

`--checkpoint` takes a converted checkpoint, one saved step, or a run's workdir. Text prompts use
LIMA's chat format when the model was fine-tuned with EOT, plain text after BOS otherwise; each
sequence stops at EOT or EOS. `--mesh=fsdp=4,tensor=2` lays the weights and the KV cache over the
devices by the training rules; on a slice every host runs the same line and process 0 prints."""
from __future__ import annotations

import json

from absl import flags

from lima_jax.cli import (check_exists, define_distributed_flags, define_dtype_flag, define_mesh_flag, define_sampling_flags,
                          no_arguments, run, stdout_for_results)
from lima_jax.data.records import read_conversations
from lima_jax.errors import LimaError
from lima_jax.inference.hosts import is_writer

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a checkpoint, a step directory, or a run's workdir")
_PROMPT_IDS = flags.DEFINE_string("prompt_ids", None, "the prompt as comma-separated token ids, e.g. 1,2,3")
_PROMPT = flags.DEFINE_string("prompt", None, "a user message")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "JSONL, one conversation per line (LIMA or OpenAI messages format)")
_SAMPLING = define_sampling_flags()
_MESH = define_mesh_flag()
_DTYPE = define_dtype_flag()
_DISTRIBUTED = define_distributed_flags()
_PRINT_IDS = flags.DEFINE_bool("print_ids", False, "print the generated token ids, space-separated, one line per prompt")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not _CHECKPOINT.value:
        raise LimaError("--checkpoint is required")
    given = [f for f in (_PROMPT_IDS, _PROMPT, _PROMPT_FILE) if f.value is not None]
    if len(given) != 1:
        raise LimaError("give exactly one of --prompt_ids, --prompt, --prompt_file")
    params = _SAMPLING.params()
    records = read_conversations(_PROMPT_FILE.value)[0] if _PROMPT_FILE.value is not None else None
    check_exists(_CHECKPOINT.value, "checkpoint")
    # The input is checked: now JAX.
    from lima_jax.inference.generator import Generator, parse_ids, parse_mesh, prompt_turns

    prompts = [parse_ids(_PROMPT_IDS.value)] if _PROMPT_IDS.value is not None else None
    if _PROMPT_IDS.value is not None:
        conversations = None
    elif _PROMPT.value is not None:
        conversations = [[_PROMPT.value]]
    else:
        conversations = [prompt_turns(r["conversations"]) for r in records]
    with stdout_for_results():  # stdout: the answers alone
        _DISTRIBUTED.start()
        generator = Generator(_CHECKPOINT.value, parse_mesh(_MESH.value), _DTYPE.value)
        if prompts is None:
            prompts = [generator.encode(turns) for turns in conversations]
        outputs = generator(prompts, params, _SAMPLING.seed.value)
    if not is_writer():  # every process holds the answers; one prints them
        return
    for i, ids in enumerate(outputs):
        if _PRINT_IDS.value or generator.tokenizer is None:
            print(" ".join(map(str, ids)))
        elif _PROMPT_FILE.value is not None:
            print(json.dumps({"prompt": conversations[i], "output": generator.decode(ids)}))
        else:
            print(generator.decode(ids))


if __name__ == "__main__":
    run(main)
