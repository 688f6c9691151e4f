r"""Show one training example as the run will see it: the rendered text with the tokens that carry
loss marked, and the token counts.

    python -m lima_jax.data.inspect --config=tiny
    python -m lima_jax.data.inspect --config=llama3_8b --config.data.tokenizer=/models/Llama-3.1-8B \
        --config.data.manual_dir=/data/lima --config.data.chat_format=template --config.data.eot='<|eot_id|>' --index=3

Trained tokens are printed between [[ and ]]. It reads the data folder's train.jsonl (or `--file`)
directly and compiles nothing.
"""
from __future__ import annotations

from absl import flags

from lima_jax.cli import define_config_flag, no_arguments, run
from lima_jax.errors import LimaError

_CONFIG = define_config_flag("config", "tiny")
_INDEX = flags.DEFINE_integer("index", 0, "which conversation of the file (0-based)")
_FILE = flags.DEFINE_string("file", None, "a JSONL file of conversations (default: train.jsonl of data.manual_dir, or the demo's)")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    from lima_jax.data.pipeline import manual_dir
    from lima_jax.data.records import read_conversations
    from lima_jax.data.tokenizer import ChatTokenizer
    from lima_jax.train.vocab import tokenizer_for
    from lima_jax.data import demo_dir

    config = _CONFIG.value
    data = config.data
    path = _FILE.value or manual_dir(config) / "train.jsonl"
    records, _ = read_conversations(path, skip_invalid=data.skip_invalid)
    if not 0 <= _INDEX.value < len(records):
        raise LimaError(f"--index {_INDEX.value}: {path} holds {len(records)} conversations")
    tokenizer_path = tokenizer_for(config) or demo_dir() / "tokenizer.model"
    tok = ChatTokenizer(tokenizer_path, eot=data.eot, chat_format=data.chat_format)
    turns = records[_INDEX.value]["conversations"]
    ids, mask = tok.encode_conversation(turns, max_len=1 << 62, train_on=data.train_on)
    kept = min(len(ids), data.max_len + 1)  # what the batcher keeps: inputs and targets of max_len
    eot = f"new token {tok.eot_id}" if tok.new_eot else f"{tok.token(tok.eot_id)!r} (id {tok.eot_id})"
    print(f"conversation {_INDEX.value} of {path}: {len(turns)} turns; tokenizer {tokenizer_path} ({tok.text.kind}, "
          f"{tok.num_pieces} ids); chat format {data.chat_format}; EOT {eot}; train_on {data.train_on}")
    print(tok.show(ids[:kept], mask[:kept]))
    trimmed = f", {len(ids) - kept} trimmed past data.max_len={data.max_len}" if kept < len(ids) else ""
    print(f"tokens: {kept}{trimmed}; trained: {int(mask[:kept].sum())} ({mask[:kept].mean():.0%})")


if __name__ == "__main__":
    run(main)
