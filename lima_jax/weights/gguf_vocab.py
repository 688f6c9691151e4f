"""The tokenizer inside a GGUF file, both ways.

llama.cpp keeps the vocabulary as metadata: `tokenizer.ggml.model` is "llama" for a sentencepiece
model (tokens, scores, token types) or "gpt2" for a byte-level BPE (tokens, merges, and a named
pre-tokenizer `tokenizer.ggml.pre`), plus the special ids and the chat template. Importing rebuilds a
file `text_tokenizers.load` reads (a sentencepiece model proto, or a tokenizer.json with its
tokenizer_config.json); exporting writes the checkpoint's tokenizer (sentencepiece as "llama"; a
byte-level BPE tokenizer.json or Llama 3's tiktoken file as "gpt2"), with LIMA's end-of-turn token
added as a control token when the model was trained with a new one.
"""
from __future__ import annotations

import json
import os
from typing import Any

from lima_jax.data import text_tokenizers
from lima_jax.data.tokenizer import NEW_EOT, of_model
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig
from lima_jax.weights.hf_chat import lima_chat_template
from lima_jax.storage.paths import Path

# gguf.TokenType and sentencepiece's ModelProto.SentencePiece.Type share their numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# llama.cpp's names for byte-level BPE pre-tokenizers (llama-vocab.cpp) -> the regexes it splits text by, in
# order, each match kept as a piece, before the byte-level mapping.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"  # tokenizers' ByteLevel
QWEN2_PATTERN = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DIGIT_PATTERN = r"\p{N}"  # one number character: tokenizers' Digits(individual_digits=True)
PRE_SPLITS = {
    "llama-bpe": (text_tokenizers.LLAMA3_PATTERN,),
    "gpt-2": (GPT2_PATTERN,),
    "qwen2": (QWEN2_PATTERN,),
    "smollm": (DIGIT_PATTERN, GPT2_PATTERN),  # SmolLM/SmolLM2: Digits(individual_digits=True), then ByteLevel
}
# Other names llama.cpp gives the same regexes (llama-vocab.cpp: one `case` list each), and "default" (a file
# from before llama.cpp named pre-tokenizers), read as GPT-2's split as it always was here.
PRE_ALIASES = {"default": "gpt-2", "llama3": "llama-bpe",
               **dict.fromkeys(("starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), "smollm")}
# Where a chat model's export keeps its tokenizer's end-of-sequence id (tokenizer.ggml.eos_token_id holds
# the EOT, the one id transformers stops at); llama.cpp and transformers read no such key.
LIMA_EOS = "lima.eos_token_id"


def field(reader: Any, key: str, default: Any = None) -> Any:
    """A GGUF metadata value (a string, a number, or a list), or `default` when the file lacks it."""
    f = reader.get_field(key)
    return default if f is None else f.contents()


# ---------------------------------------------------------------------------------------------------
# Export: the checkpoint's tokenizer into a GGUFWriter.


def add(writer: Any, tokenizer: str | os.PathLike, cfg: ModelConfig, *, eot_id: int | None, chat_format: str) -> None:
    """Adds the tokenizer's metadata to `writer`: one token per embedding row, special ids, EOT and
    a chat template. `eot_id` None means: LIMA's new token if the model has exactly one row more than
    the tokenizer has ids, else a base model (no EOT, no template)."""
    tok = text_tokenizers.load(tokenizer)
    if tok.kind == "sentencepiece":
        tokens, scores, types = _sentencepiece_vocab(tok)
        writer.add_tokenizer_model("llama")
        spec = _proto(tok).normalizer_spec
        writer.add_add_space_prefix(spec.add_dummy_prefix)
        writer.add_remove_extra_whitespaces(spec.remove_extra_whitespaces)
    else:
        tokens, types, merges, pre = _bpe_vocab(tok, tokenizer) if tok.kind == "hf" else _tiktoken_vocab(tok)
        scores = None
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_merges(merges)

    used = cfg.used_vocab_size
    if eot_id is None:  # a LIMA fine-tune exported without its run record (one row more than the tokenizer),
        chat, eot_id = of_model(tokenizer, used, {})  # or a converted instruct model (its own chat template)
        chat_format = chat.chat_format
    if eot_id is not None and eot_id == len(tokens):  # LIMA's new token: the row past the tokenizer's
        tokens, types = tokens + [NEW_EOT], types + [CONTROL]
        scores = None if scores is None else scores + [0.0]
    if len(tokens) > used:
        raise LimaError(f"tokenizer {tokenizer}: {len(tokens)} tokens but the model has {used} embedding rows")
    for i in range(len(tokens), used):  # rows no token names (padded vocabularies), as convert_hf_to_gguf does
        tokens, types = tokens + [f"[PAD{i}]"], types + [UNUSED]
        scores = None if scores is None else scores + [-1000.0]
    if eot_id is not None and not 0 <= eot_id < used:
        raise LimaError(f"end-of-turn id {eot_id} is not one of the model's {used} token ids")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if scores is not None:
        writer.add_token_scores(scores)
    if tok.bos_id is not None:
        writer.add_bos_token_id(tok.bos_id)
    _add_ends(writer, tok.eos_id, eot_id)
    writer.add_add_bos_token(tok.bos_id is not None)
    writer.add_add_eos_token(False)
    if tok.kind == "sentencepiece":
        writer.add_unk_token_id(tok.sp.unk_id())
    if eot_id is None:
        return
    if chat_format == "template" and tok.chat_template:
        writer.add_chat_template(tok.chat_template)
    else:
        writer.add_chat_template(lima_chat_template(None if tok.bos_id is None else tokens[tok.bos_id], tokens[eot_id]))


def _add_ends(writer: Any, eos_id: int | None, eot_id: int | None) -> None:
    """The ids generation stops at. llama.cpp stops at eos, eot and eom alike (llama-vocab.cpp's
    special_eog_ids), but transformers' GGUF loader reads eos alone into its config: a chat model's file
    names its EOT as eos too, and keeps the tokenizer's own eos under LIMA_EOS for our import (`eos_id`).
    A base model (no EOT) keeps its eos."""
    if eot_id is None:
        if eos_id is not None:
            writer.add_eos_token_id(eos_id)
        return
    writer.add_eos_token_id(eot_id)
    writer.add_eot_token_id(eot_id)
    if eos_id is not None and eos_id != eot_id:
        writer.add_uint32(LIMA_EOS, eos_id)


def eos_id(reader: Any) -> int | None:
    """The tokenizer's own end-of-sequence id: LIMA_EOS where our export named the EOT as eos, else eos."""
    eos = field(reader, "tokenizer.ggml.eos_token_id")
    if eos is not None and eos == field(reader, "tokenizer.ggml.eot_token_id"):
        return field(reader, LIMA_EOS, eos)
    return eos


def _proto(tok: Any) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(tok.sp.serialized_model_proto())
    return m


def _sentencepiece_vocab(tok: Any) -> tuple[list[str], list[float], list[int]]:
    pieces = _proto(tok).pieces
    return [p.piece for p in pieces], [p.score for p in pieces], [int(p.type) for p in pieces]


def _bpe_vocab(tok: Any, source: str | os.PathLike) -> tuple[list[str], list[int], list[str], str]:
    """Tokens, types, merges ("a b") and llama.cpp's pre-tokenizer name of a byte-level BPE tokenizer.json."""
    spec = json.loads(tok.tok.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise LimaError(f"tokenizer {source}: GGUF export supports byte-level BPE tokenizer.json files only")
    pre = spec.get("pre_tokenizer")
    splits = _splits(pre)
    name = next((name for name, p in PRE_SPLITS.items() if p == splits), None)
    if name is None:
        raise LimaError(f"tokenizer {source}: its pre-tokenizer {_describe(pre)} splits text as no pre-tokenizer "
                        f"llama.cpp names ({', '.join(PRE_SPLITS)}) does")
    special = {t.content for t in tok.tok.get_added_tokens_decoder().values() if t.special}
    tokens = [tok.tok.id_to_token(i) or f"[PAD{i}]" for i in range(tok.num_ids)]
    types = [CONTROL if t in special else NORMAL if t in model["vocab"] else UNUSED if t == f"[PAD{i}]" else USER_DEFINED
             for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, name


def _tiktoken_vocab(tok: Any) -> tuple[list[str], list[int], list[str], str]:
    """Llama 3's tiktoken ranks as a byte-level BPE: each token's bytes in GPT-2's printable alphabet,
    and the merges the ranks imply (as transformers' TikTokenConverter and llama.cpp derive them)."""
    ranks = {tok.enc.decode_single_token_bytes(i): i for i in range(tok.num_base)}
    merges = []
    for token, rank in ranks.items():
        pairs = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, ranks[a], ranks[b], a, b) for a, b in pairs]
    chars = _byte_chars()

    def text(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    tokens = [text(b) for b in sorted(ranks, key=ranks.__getitem__)] + list(tok.special)
    types = [NORMAL] * tok.num_base + [CONTROL] * len(tok.special)
    return tokens, types, [f"{text(a)} {text(b)}" for *_, a, b in sorted(merges)], "llama-bpe"


def _byte_chars() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, the alphabet byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(others)) for b in range(256)}


def _splits(pre: Any) -> tuple[str, ...] | None:
    """The regexes a byte-level pre-tokenizer splits text by, in order (each match kept as a piece), read
    from every element of a Sequence; None for anything else (another split behaviour, a ByteLevel that is
    not last or adds a prefix space, Metaspace, ...), which no llama.cpp name expresses."""
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    splits: list[str] = []
    for i, step in enumerate(steps):
        kind = step.get("type") if isinstance(step, dict) else None
        if kind == "ByteLevel" and i == len(steps) - 1 and not step.get("add_prefix_space", True):
            return (*splits, GPT2_PATTERN) if step.get("use_regex", True) else tuple(splits)
        if kind == "Split" and "Regex" in step.get("pattern", {}) and step.get("behavior") == "Isolated" and not step.get("invert"):
            splits.append(step["pattern"]["Regex"])
        elif kind == "Digits":  # tokenizers' Digits splits on char::is_numeric, i.e. \p{N}
            splits.append(DIGIT_PATTERN if step.get("individual_digits") else DIGIT_PATTERN + "+")
        else:
            return None
    return None  # no ByteLevel at the end


def _describe(pre: Any) -> str:
    """A pre-tokenizer in one line, as tokenizer.json spells it."""
    if not isinstance(pre, dict):
        return repr(pre)
    kind = pre.get("type")
    if kind == "Sequence":
        return f"Sequence[{', '.join(_describe(p) for p in pre.get('pretokenizers', []))}]"
    if kind == "Split":
        pattern = next(iter(pre.get("pattern", {}).values()), None)
        return f"Split({pattern!r}, {str(pre.get('behavior')).lower()}{', inverted' if pre.get('invert') else ''})"
    args = ", ".join(f"{k}={v}" for k, v in pre.items() if k not in ("type", "trim_offsets"))
    return f"{kind}({args})"


# ---------------------------------------------------------------------------------------------------
# Import: the GGUF's tokenizer as files beside the converted checkpoint.


def extract(reader: Any, folder: Path, source: str) -> Path | None:
    """Writes the GGUF's tokenizer into `folder` and returns what `text_tokenizers.load` reads (None:
    the file holds no tokenizer). A trailing LIMA end-of-turn token is left out: the model then has
    one row more than the tokenizer, which is how a LIMA fine-tune records its new EOT."""
    kind = field(reader, "tokenizer.ggml.model")
    if kind is None:
        return None
    tokens = field(reader, "tokenizer.ggml.tokens") or []
    types = field(reader, "tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    eot = field(reader, "tokenizer.ggml.eot_token_id")
    if tokens and tokens[-1] == NEW_EOT and eot == len(tokens) - 1:
        tokens, types = tokens[:-1], types[:-1]
    special = {name: field(reader, f"tokenizer.ggml.{name}_token_id") for name in ("bos", "unknown", "padding")}
    special["eos"] = eos_id(reader)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "llama":
        scores = field(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
        data = _sentencepiece_model(reader, tokens[: len(scores)], scores, types, special, source)
        (folder / text_tokenizers.MODEL_FILE).write_bytes(data)
        return folder / text_tokenizers.MODEL_FILE
    if kind == "gpt2":
        _write_bpe(reader, folder, tokens, types, special, source)
        return folder
    raise LimaError(f"{source}: tokenizer.ggml.model {kind!r} is not supported (llama or gpt2)")


def _sentencepiece_model(reader: Any, tokens: list[str], scores: list[float], types: list[int],
                         special: dict[str, int | None], source: str) -> bytes:
    """A sentencepiece BPE model proto (LLaMA's kind) holding the GGUF's pieces."""
    from sentencepiece import sentencepiece_model_pb2

    if special["unknown"] is None and UNKNOWN in types:
        special = dict(special, unknown=types.index(UNKNOWN))
    m = sentencepiece_model_pb2.ModelProto()
    m.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.byte_fallback = BYTE in types
    # sentencepiece finds BOS/EOS/UNK/PAD by their pieces' text; an id it does not hold is -1.
    for name, piece_field, id_field in (("bos", "bos_piece", "bos_id"), ("eos", "eos_piece", "eos_id"),
                                        ("unknown", "unk_piece", "unk_id"), ("padding", "pad_piece", "pad_id")):
        i = special[name]
        if i is not None and 0 <= i < len(tokens):
            setattr(m.trainer_spec, piece_field, tokens[i])
            setattr(m.trainer_spec, id_field, i)
        else:
            setattr(m.trainer_spec, id_field, -1)
    unk = m.trainer_spec.unk_id
    if UNKNOWN not in types and unk < 0:
        raise LimaError(f"{source}: its sentencepiece vocabulary has no unknown token (tokenizer.ggml.unknown_token_id)")
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = bool(field(reader, "tokenizer.ggml.add_space_prefix", True))
    m.normalizer_spec.remove_extra_whitespaces = bool(field(reader, "tokenizer.ggml.remove_extra_whitespaces", False))
    m.normalizer_spec.escape_whitespaces = True
    for i, (token, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = m.pieces.add()
        piece.piece, piece.score = token, float(score)
        piece.type = UNKNOWN if i == unk else (NORMAL if kind == UNKNOWN else kind)
    return m.SerializeToString()


def _write_bpe(reader: Any, folder: Path, tokens: list[str], types: list[int], special: dict[str, int | None],
               source: str) -> None:
    """tokenizer.json (byte-level BPE with the named pre-tokenizer) and tokenizer_config.json."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    named = field(reader, "tokenizer.ggml.pre", "gpt-2")
    pre = PRE_ALIASES.get(named, named)
    if pre not in PRE_SPLITS:
        raise LimaError(f"{source}: tokenizer.ggml.pre {named!r} is not supported ({', '.join([*PRE_SPLITS, *PRE_ALIASES])}); "
                        "convert with --tokenizer=PATH of the model's tokenizer.json")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges") or []]
    # Every token in the model's vocabulary, so that the special ones added below keep their ids.
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, ignore_merges=pre == "llama-bpe"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        *(pre_tokenizers.Split(Regex(p), behavior="isolated") for p in PRE_SPLITS[pre]),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL])
    tok.add_tokens([AddedToken(t, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED])
    (folder / text_tokenizers.HF_FILE).write_text(tok.to_str())
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for name, key in (("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token")):
        if special[name] is not None and 0 <= special[name] < len(tokens):
            config[key] = tokens[special[name]]
    template = field(reader, "tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    (folder / text_tokenizers.HF_CONFIG).write_text(json.dumps(config, indent=2))
