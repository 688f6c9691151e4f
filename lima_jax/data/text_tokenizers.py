"""Text <-> ids for the three kinds of tokenizer LLaMA-family models ship, behind one interface.

- a sentencepiece `tokenizer.model` (LLaMA 1/2, Mistral v0.1, TinyLlama);
- a Hugging Face `tokenizer.json`, alone or in a model folder with its `tokenizer_config.json`
  (Llama 3 on the Hub, Qwen2.5, SmolLM2, Mistral): read with the small `tokenizers` library;
- Meta's Llama 3 `tokenizer.model`: tiktoken's format (one `base64(token) rank` line per token, no
  protobuf), read with `tiktoken`, the format's own library: it applies the ranks exactly as Meta's
  reference code does, where rebuilding BPE merges from ranks for `tokenizers` is a conversion of its own.

The chat format (BOS, EOT, loss mask) lives in `tokenizer.py`; this module only knows the tokenizer.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from typing import Protocol, Sequence

from lima_jax.errors import LimaError
from lima_jax.storage.paths import Path, PathLike, copy_file

HF_FILE = "tokenizer.json"
MODEL_FILE = "tokenizer.model"
HF_CONFIG = "tokenizer_config.json"
# Read beside tokenizer.json when present: BOS/EOS (tokenizer_config.json, else special_tokens_map.json)
# and the chat template (inside tokenizer_config.json, or chat_template.jinja in newer folders).
HF_EXTRAS = (HF_CONFIG, "special_tokens_map.json", "chat_template.jinja")

# Llama 3's pre-tokenizer pattern and special tokens are Meta's code, not part of the file
# (llama/tokenizer.py in meta-llama/llama3 and llama-models): ids past the ranks, in this order.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NUM_SPECIAL = 256
LLAMA3_SPECIAL = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>",
]
_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+=* \d+")


class TextTokenizer(Protocol):
    """What the chat format needs from a tokenizer."""

    kind: str  # sentencepiece | hf | tiktoken
    num_ids: int  # ids 0 .. num_ids - 1, special tokens included
    bos_id: int | None  # None: the tokenizer has none (Qwen), so conversations start with the first turn
    eos_id: int | None
    chat_template: str | None  # the tokenizer's own Jinja chat template, if it ships one

    def encode(self, text: str) -> list[int]:
        """Ids of plain text: no BOS/EOS added, and a special token's text in it (`<|eot_id|>`) stays text."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special tokens are left out."""

    def token_id(self, token: str) -> int | None:
        """The id of one whole token (e.g. `<|eot_id|>`), or None."""

    def token(self, i: int) -> str:
        """How id `i` is written in the vocabulary (for showing tokens to a person)."""

    def show(self, ids: Sequence[int]) -> str:
        """Text of `ids` with special tokens written out (for showing examples to a person)."""

    def token_text(self, i: int) -> str:
        """The text token `i` adds inside running text, its leading space included (OpenAI's logprobs)."""


class SentencePieceTokenizer:
    kind = "sentencepiece"

    def __init__(self, path: Path, data: bytes) -> None:
        import sentencepiece as spm

        try:  # from its bytes: sentencepiece reads local files only, the model may be on gs://
            self.sp = spm.SentencePieceProcessor(model_proto=data)
        except (OSError, RuntimeError) as e:
            raise LimaError(f"tokenizer model {path}: not a sentencepiece or tiktoken model ({e})") from None
        if self.sp.bos_id() < 0 or self.sp.eos_id() < 0:
            raise LimaError(f"tokenizer model {path}: it defines no BOS or EOS piece")
        self.num_ids = self.sp.get_piece_size()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.chat_template = None

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))  # control pieces (BOS, EOS) decode to nothing

    def token_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        return i if self.sp.id_to_piece(i) == token else None  # unknown pieces map to <unk>

    def token(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def token_text(self, i: int) -> str:
        return self.sp.id_to_piece(i).replace("\u2581", " ")  # sentencepiece's word marker is a space

    def show(self, ids: Sequence[int]) -> str:
        out, run = [], []
        for i in ids:
            if self.sp.is_control(i):  # BOS/EOS decode to nothing: write their pieces
                out += [self.sp.decode(run), self.sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join(out + [self.sp.decode(run)])


class TiktokenTokenizer:
    kind = "tiktoken"

    def __init__(self, path: Path, data: bytes) -> None:
        import tiktoken

        ranks = {}
        for n, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            token, _, rank = line.partition(b" ")
            try:
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (binascii.Error, ValueError):
                raise LimaError(f"tokenizer model {path}:{n}: not a `base64 rank` line of a tiktoken file") from None
        if sorted(ranks.values()) != list(range(len(ranks))):
            raise LimaError(f"tokenizer model {path}: its ranks are not 0 .. {len(ranks) - 1} without gaps")
        self.num_base = len(ranks)
        names = LLAMA3_SPECIAL + [
            f"<|reserved_special_token_{2 + i}|>" for i in range(LLAMA3_NUM_SPECIAL - len(LLAMA3_SPECIAL))
        ]
        self.special = {name: self.num_base + i for i, name in enumerate(names)}
        self.enc = tiktoken.Encoding(name=str(path), pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=self.special)
        self.num_ids = self.num_base + len(names)
        self.bos_id, self.eos_id = self.special["<|begin_of_text|>"], self.special["<|end_of_text|>"]
        self.chat_template = None

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)  # special tokens' text in user data stays text

    def decode(self, ids: Sequence[int]) -> str:
        return self.enc.decode([i for i in ids if i < self.num_base])

    def token_id(self, token: str) -> int | None:
        if token in self.special:
            return self.special[token]
        ids = self.enc.encode_ordinary(token)
        return ids[0] if len(ids) == 1 else None

    def token(self, i: int) -> str:
        return self.enc.decode_single_token_bytes(i).decode("utf-8", errors="replace")

    def show(self, ids: Sequence[int]) -> str:
        return self.enc.decode(list(ids))

    def token_text(self, i: int) -> str:
        return self.token(i)


class HFTokenizer:
    kind = "hf"

    def __init__(self, files: dict[str, Path]) -> None:
        from tokenizers import Tokenizer

        path = files[HF_FILE]
        try:
            self.tok = Tokenizer.from_str(path.read_text())
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
            raise LimaError(f"tokenizer {path}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0]})") from None
        self.num_ids = max(self.tok.get_vocab(with_added_tokens=True).values()) + 1
        settings: dict = {}
        for name in reversed(HF_EXTRAS[:2]):  # tokenizer_config.json wins over special_tokens_map.json
            if name in files:
                try:
                    settings.update(json.loads(files[name].read_text()))
                except json.JSONDecodeError as e:
                    raise LimaError(f"tokenizer config {files[name]}: not JSON ({e})") from None
        self.chat_template = settings.get("chat_template")
        if isinstance(self.chat_template, list):  # several named templates: the default one
            self.chat_template = {t.get("name"): t.get("template") for t in self.chat_template}.get("default")
        if HF_EXTRAS[2] in files:
            self.chat_template = files[HF_EXTRAS[2]].read_text()
        self.bos_id = self._special(settings, "bos_token", path)
        self.eos_id = self._special(settings, "eos_token", path)
        # What chat templates read besides the messages (transformers passes the special tokens' text).
        self.template_variables = {
            key: (value.get("content") if isinstance(value, dict) else value) or ""
            for key, value in settings.items() if key.endswith("_token")
        }

    def _special(self, settings: dict, key: str, path: Path) -> int | None:
        """The id of `bos_token`/`eos_token` as the tokenizer's config names it (None when unset)."""
        value = settings.get(key)
        if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
            value = value.get("content")
        if not value:
            return None
        i = self.tok.token_to_id(value)
        if i is None:
            raise LimaError(f"tokenizer {path}: its config's {key} {value!r} is not in the vocabulary")
        return i

    def encode(self, text: str) -> list[int]:
        self.tok.encode_special_tokens = True  # special tokens' text in user data stays text, as with the others
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def token(self, i: int) -> str:
        return self.tok.id_to_token(i) or ""

    def show(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def token_text(self, i: int) -> str:
        # After an ordinary token, so that decoders which drop a leading space at the start of a text
        # (Metaspace) keep it.
        anchor = self.tok.decode([self._anchor], skip_special_tokens=False)
        return self.tok.decode([self._anchor, i], skip_special_tokens=False)[len(anchor):]

    @functools.cached_property
    def _anchor(self) -> int:
        return self.tok.encode("a", add_special_tokens=False).ids[0]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of `text` (special tokens written in it become their ids) and each one's character span."""
        self.tok.encode_special_tokens = False
        enc = self.tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets


def files_of(path: PathLike) -> dict[str, Path]:
    """The files that make up the tokenizer at `path` (see `load`), by the names a checkpoint keeps
    them under: what to copy, found without parsing anything."""
    path = Path(path)
    if path.is_dir():
        if (path / HF_FILE).is_file():
            path = path / HF_FILE
        elif (path / MODEL_FILE).is_file():
            return {MODEL_FILE: path / MODEL_FILE}
        else:
            raise LimaError(f"tokenizer folder {path}: it holds neither {HF_FILE} nor {MODEL_FILE}")
    elif not path.is_file():
        raise LimaError(f"tokenizer model {path} not found")
    if not path.name.endswith(".json"):
        return {MODEL_FILE: path}
    return {HF_FILE: path, **{name: path.parent / name for name in HF_EXTRAS if (path.parent / name).is_file()}}


def load(path: PathLike) -> TextTokenizer:
    """The tokenizer at `path`: a `tokenizer.model` (sentencepiece or tiktoken, told apart by its
    bytes), a `tokenizer.json`, or a folder holding either (tokenizer.json first, as transformers does)."""
    files = files_of(path)
    if HF_FILE in files:
        return HFTokenizer(files)
    path = files[MODEL_FILE]
    data = path.read_bytes()
    if _TIKTOKEN_LINE.fullmatch(data[: data.find(b"\n")] if b"\n" in data else data):
        return TiktokenTokenizer(path, data)
    return SentencePieceTokenizer(path, data)


def copy_files(path: PathLike, folder: PathLike) -> None:
    """Copies the tokenizer at `path` into `folder` (a checkpoint or a run's workdir), where
    `load(folder)` finds it again."""
    files = files_of(path)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        copy_file(src, Path(folder) / name)
