"""Generate from a checkpoint, with LIMA's sampling defaults (nucleus p 0.9, temperature 0.7,
repetition penalty 1.2).

    python -m lima_jax.sample --checkpoint=runs/tiny --prompt="What is 3 plus 4?"
    python -m lima_jax.sample --checkpoint=CKPT --prompt_file=prompts.jsonl      # batched, JSONL out
    python -m lima_jax.sample --checkpoint=CKPT --prompt_ids=1,2,3 --temperature=0 \
        --max_new_tokens=20 --print_ids                                          # token for token

`--mesh=fsdp=4,tensor=2` lays the weights and the KV cache over this host's devices by the training
rules (default: one device).

`--checkpoint` takes a converted checkpoint, one saved step, or a run's workdir (its latest
complete step). Text prompts use LIMA's chat format (BOS, each utterance followed by EOT) when the
model was fine-tuned with EOT, and plain text after BOS for a base model. `--prompt_ids` are fed as
given. Each sequence stops at EOT or EOS.
"""
from __future__ import annotations

import json
import pathlib

import jax
from absl import flags

from lima_jax import checkpoint, sharding
from lima_jax.cli import run
from lima_jax.data.records import read_conversations
from lima_jax.data.tokenizer import ChatTokenizer
from lima_jax.errors import LimaError
from lima_jax.model import Llama, model_from_params
from lima_jax.sampling import SamplingParams, generate
from lima_jax.state import param_shardings

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a checkpoint, a step directory, or a run's workdir")
_PROMPT_IDS = flags.DEFINE_string("prompt_ids", None, "the prompt as comma-separated token ids, e.g. 1,2,3")
_PROMPT = flags.DEFINE_string("prompt", None, "a user message")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "JSONL, one conversation per line (LIMA or OpenAI messages format)")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.7, "0 decodes greedily")
_TOP_P = flags.DEFINE_float("top_p", 0.9, "nucleus sampling: the probability mass kept")
_PENALTY = flags.DEFINE_float("repetition_penalty", 1.2, "CTRL-style penalty on tokens already generated (1 = off)")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 2048, "how many tokens to generate at most")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed: the same seed gives the same text")
_MESH = flags.DEFINE_string("mesh", "", "e.g. fsdp=4,tensor=2 (one size may be -1: the rest of the devices); empty: one device")
_PRINT_IDS = flags.DEFINE_bool("print_ids", False, "print the generated token ids, space-separated, one line per prompt")


class Generator:
    """A loaded checkpoint with its tokenizer and stop tokens, ready to answer conversations."""

    def __init__(self, path: str, mesh: jax.sharding.Mesh | None = None):
        cfg = checkpoint.load_model_config(path)
        shardings = param_shardings(cfg, mesh) if mesh is not None else None
        cfg, params = checkpoint.load_params(path, cfg, shardings)
        self.mesh = mesh
        self.model: Llama = model_from_params(cfg, params)
        del params
        self.model.unstack_layers(fuse_projections=mesh is None)
        tokenizer_file = checkpoint.tokenizer_path(path)
        self.tokenizer = ChatTokenizer(tokenizer_file) if tokenizer_file else None
        eot = checkpoint.run_info(path).get("eot_id")
        if eot is None and self.tokenizer is not None and cfg.vocab_size == self.tokenizer.vocab_size:
            eot = self.tokenizer.eot_id  # a fine-tuned model exported without its run record
        self.eot_id: int | None = eot
        self.stop_ids = tuple(t for t in (eot, cfg.eos_id) if t is not None)

    def encode(self, turns: list[str]) -> list[int]:
        if self.tokenizer is None:
            raise LimaError("this checkpoint has no tokenizer.model: use --prompt_ids, or convert with --tokenizer")
        if self.eot_id is None:  # a base model: plain text, no chat format
            return [self.tokenizer.bos_id] + self.tokenizer.sp.encode("\n\n".join(turns))
        return self.tokenizer.encode_prompt(turns)

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return self.tokenizer.decode(ids)

    def __call__(self, prompts: list[list[int]], params: SamplingParams, seed: int, row_seeds=None) -> list[list[int]]:
        return generate(self.model, prompts, params, stop_ids=self.stop_ids, seed=seed, row_seeds=row_seeds, mesh=self.mesh)


def parse_mesh(text: str) -> jax.sharding.Mesh | None:
    """`fsdp=4,tensor=2` -> a mesh over this host's devices; empty -> None (one device)."""
    if not text.strip():
        return None
    sizes = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        name = name.strip()
        if name not in sharding.MESH_AXES or not size.strip().lstrip("-").isdigit():
            raise LimaError(f"--mesh: {part!r} is not AXIS=SIZE with AXIS one of {', '.join(sharding.MESH_AXES)}")
        sizes[name] = int(size)
    if -1 not in sizes.values() and "data" not in sizes:
        sizes["data"] = -1  # the devices the named axes leave
    return sharding.make_mesh(sizes, jax.local_devices())


def parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise LimaError(f"--prompt_ids: {text!r} is not a comma-separated list of token ids") from None


def prompt_turns(conversation: list[str]) -> list[str]:
    """The turns up to the last user message: a conversation with an answer loses the answer."""
    return conversation if len(conversation) % 2 == 1 else conversation[:-1]


def sampling_params() -> SamplingParams:
    params = SamplingParams(_TEMPERATURE.value, _TOP_P.value, _PENALTY.value, _MAX_NEW_TOKENS.value)
    params.check()
    return params


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise LimaError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _CHECKPOINT.value:
        raise LimaError("--checkpoint is required")
    given = [f for f in (_PROMPT_IDS, _PROMPT, _PROMPT_FILE) if f.value is not None]
    if len(given) != 1:
        raise LimaError("give exactly one of --prompt_ids, --prompt, --prompt_file")
    params = sampling_params()
    generator = Generator(_CHECKPOINT.value, parse_mesh(_MESH.value))

    if _PROMPT_IDS.value is not None:
        conversations = None
        prompts = [parse_ids(_PROMPT_IDS.value)]
    elif _PROMPT.value is not None:
        conversations = [[_PROMPT.value]]
        prompts = [generator.encode(conversations[0])]
    else:
        records, _ = read_conversations(pathlib.Path(_PROMPT_FILE.value))
        conversations = [prompt_turns(r["conversations"]) for r in records]
        prompts = [generator.encode(turns) for turns in conversations]

    outputs = generator(prompts, params, _SEED.value)
    for i, ids in enumerate(outputs):
        if _PRINT_IDS.value or generator.tokenizer is None:
            print(" ".join(map(str, ids)))
        elif _PROMPT_FILE.value is not None:
            print(json.dumps({"prompt": conversations[i], "output": generator.decode(ids)}))
        else:
            print(generator.decode(ids))


if __name__ == "__main__":
    run(main)
