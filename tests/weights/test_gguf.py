"""GGUF in and out: files written here with the `gguf` package's own writer (as llama.cpp's
convert_hf_to_gguf lays them out) import to transformers' logits, quantized tensors to exactly what
`gguf` dequantizes; our export reads back with `gguf.GGUFReader` with the tensors, metadata,
tokenizer and EOT llama.cpp expects, and imports again to the same logits."""
import json
import subprocess
import sys

import gguf
import jax
import jinja2
import numpy as np
import pytest
from support.hf_reference import hf_logits, hf_state, random_hf_model, torch, transformers

from support.paths import LLAMA_TOKENIZER, require
from lima_jax.data import demo_dir, text_tokenizers
from lima_jax.data.tokenizer import NEW_EOT, ChatTokenizer
from lima_jax.errors import LimaError
from lima_jax.model import ModelConfig, model_from_params
from lima_jax.weights import checkpoint
from lima_jax.weights.convert import convert
from lima_jax.weights.names import params_from_hf

Q = gguf.GGMLQuantizationType
CFG = ModelConfig(vocab_size=97, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=96, max_len=64, norm_eps=1e-5)
# K-quants pack 256 values per block: every matrix's rows must hold whole blocks.
WIDE = CFG.replace(dim=256, ffn_dim=256, num_heads=4, num_kv_heads=2)
# The types `gguf.quants.quantize` writes, and those it only reads (filled here with random blocks).
QUANTIZABLE = (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)
K_QUANTS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}  # fp16 scale offsets
GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
    "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
    "post_attention_layernorm.weight": "ffn_norm", "mlp.gate_proj.weight": "ffn_gate",
    "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down",
}


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: rotate-half rows -> interleaved rotary pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm", "lm_head.weight": "output"}
    if hf_name in top:
        return top[hf_name] + ".weight"
    _, _, i, suffix = hf_name.split(".", 3)
    return f"blk.{i}.{GGUF_LAYER[suffix]}.weight"


def random_k_blocks(w: np.ndarray, qtype, rng) -> np.ndarray:
    """Random blocks of a K-quant (no quantizer in `gguf`), with small finite fp16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (w.shape[0], w.shape[1] // block, size), dtype=np.uint8)
    for offset in K_QUANTS[qtype]:
        raw[..., offset : offset + 2] = rng.uniform(0.001, 0.01, raw.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(w.shape[0], -1)


def add_llama_cpp_vocab(writer, model_file) -> None:
    """A sentencepiece vocabulary as convert_hf_to_gguf's `_set_vocab_sentencepiece` stores it."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    n = sp.vocab_size()
    kinds = [gguf.TokenType.UNKNOWN if sp.is_unknown(i) else gguf.TokenType.CONTROL if sp.is_control(i)
             else gguf.TokenType.UNUSED if sp.is_unused(i) else gguf.TokenType.BYTE if sp.is_byte(i)
             else gguf.TokenType.NORMAL for i in range(n)]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([sp.id_to_piece(i).encode() for i in range(n)])
    writer.add_token_scores([sp.get_score(i) for i in range(n)])
    writer.add_token_types(kinds)
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def write_gguf(path, state: dict, cfg: ModelConfig, types: list | None = None, seed: int = 0, vocab=None) -> tuple[dict, dict]:
    """Writes `state` as llama.cpp's converter does (matrices cycling through `types`, norms F32);
    returns the Hugging Face state the file holds once dequantized, and each tensor's type."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    # The keys spelled out as llama.cpp reads them (llama-arch.cpp), not through the writer's helpers.
    for key, value in {"llama.context_length": cfg.max_len, "llama.embedding_length": cfg.dim,
                       "llama.block_count": cfg.num_layers, "llama.feed_forward_length": cfg.ffn_dim,
                       "llama.attention.head_count": cfg.num_heads, "llama.attention.head_count_kv": cfg.num_kv_heads,
                       "llama.rope.dimension_count": cfg.resolved_head_dim, "tokenizer.ggml.bos_token_id": cfg.bos_id,
                       "tokenizer.ggml.eos_token_id": cfg.eos_id}.items():
        writer.add_uint32(key, value)
    writer.add_float32("llama.rope.freq_base", cfg.rope_theta)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", cfg.norm_eps)
    if vocab is not None:
        add_llama_cpp_vocab(writer, vocab)
    held, written, n = {}, {}, 0
    for name, w in state.items():
        if name.endswith("q_proj.weight"):
            w = llama_cpp_permute(w, cfg.num_heads)
        elif name.endswith("k_proj.weight"):
            w = llama_cpp_permute(w, cfg.num_kv_heads)
        qtype = Q.F32 if w.ndim == 1 or not types else types[n % len(types)]
        n += w.ndim == 2
        if qtype in K_QUANTS:
            data = random_k_blocks(w, qtype, rng)
        elif qtype == Q.BF16:
            data = gguf.quants.quantize(w, qtype)
        else:
            data = gguf.quants.quantize(w, qtype) if qtype != Q.F32 else w
        writer.add_tensor(gguf_name(name), data, raw_dtype=qtype if data.dtype == np.uint8 else None)
        dequantized = gguf.quants.dequantize(data, qtype).reshape(w.shape).astype(np.float32)
        if name.endswith(("q_proj.weight", "k_proj.weight")):  # back to rotate-half, as transformers holds it
            heads = cfg.num_heads if "q_proj" in name else cfg.num_kv_heads
            dequantized = dequantized.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
        held[name], written[name] = dequantized, qtype
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held, written


def hf_model_with(state: dict, cfg: ModelConfig):
    model = random_hf_model(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model


def check_import(path, tmp_path, held: dict, cfg: ModelConfig, atol: float) -> None:
    ckpt = convert(path, tmp_path / "ckpt")
    got_cfg, params = checkpoint.load_params(ckpt)
    assert got_cfg == cfg
    expected = params_from_hf(list(held), held.__getitem__, cfg, source="reference")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), b)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 9))
    ours = np.asarray(model_from_params(got_cfg, params)(tokens))
    np.testing.assert_allclose(ours, hf_logits(hf_model_with(held, cfg), tokens), atol=atol, rtol=0)


def test_f32_gguf_imports_to_transformers_logits_and_its_tokenizer(tmp_path):
    cfg = CFG.replace(vocab_size=32000)
    state = hf_state(random_hf_model(cfg))
    held, _ = write_gguf(tmp_path / "m.gguf", state, cfg, vocab=require(LLAMA_TOKENIZER))
    assert all(np.array_equal(held[k], state[k]) for k in state)  # F32: what is held is the model itself
    check_import(tmp_path / "m.gguf", tmp_path, held, cfg, atol=1e-4)
    original = text_tokenizers.load(require(LLAMA_TOKENIZER))
    rebuilt = text_tokenizers.load(checkpoint.tokenizer_path(tmp_path / "ckpt"))
    assert (rebuilt.kind, rebuilt.num_ids, rebuilt.bos_id, rebuilt.eos_id) == ("sentencepiece", 32000, 1, 2)
    for text in ["Hello world!", "  two  spaces, tabs\tand\nnewlines", "ünïcödé 日本語 🙂", "3.14159 <s> </s>"]:
        assert rebuilt.encode(text) == original.encode(text), text
        assert rebuilt.decode(original.encode(text)) == original.decode(original.encode(text))


def test_quantized_gguf_imports_to_what_gguf_dequantizes(tmp_path):
    """Every matrix in another type: the writable ones quantized from the model (so within their
    rounding of it), the K-quants random blocks; the import must be gguf's dequantization exactly."""
    model = random_hf_model(WIDE)
    state = hf_state(model)
    types = [Q.F16, Q.BF16, *QUANTIZABLE, *K_QUANTS]
    held, written = write_gguf(tmp_path / "m.gguf", state, WIDE, types)
    assert set(written.values()) == {Q.F32, *types}
    # Quantized, not replaced: within Q8_0's half step and Q4_0's (clipped) step of each 32-block's
    # scale, plus the rounding of that scale to float16.
    for name, qtype in written.items():
        if qtype in (Q.Q8_0, Q.Q4_0):
            w = state[name].reshape(-1, 32)
            bound = np.abs(w).max(-1, keepdims=True) * ((0.5 / 127 if qtype == Q.Q8_0 else 1 / 8) + 2**-11)
            assert (np.abs(held[name].reshape(-1, 32) - w) <= bound).all(), name
    check_import(tmp_path / "m.gguf", tmp_path, held, WIDE, atol=1e-3)  # logits of up to ~5 over dim 256


LIMA = CFG.replace(vocab_size=32001)  # LLaMA's 32000 pieces and LIMA's new end-of-turn token
PADDED = LIMA.replace(vocab_size=32008, vocab_padding=7)  # as a training run pads it for sharding


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """A checkpoint shaped like a LIMA fine-tune of LLaMA (a row for the new EOT, padding rows past
    it), the transformers model of its real rows, and its GGUF export."""
    tmp = tmp_path_factory.mktemp("lima")
    model = random_hf_model(LIMA, seed=3)
    state = hf_state(model)
    params = params_from_hf(list(state), state.__getitem__, LIMA, source="hf")
    rng = np.random.default_rng(3)
    params["embed"] = np.concatenate([params["embed"], rng.standard_normal((7, LIMA.dim), np.float32)])
    params["lm_head"] = np.concatenate([params["lm_head"], rng.standard_normal((LIMA.dim, 7), np.float32)], axis=1)
    ckpt = checkpoint.save(tmp / "ckpt", params, PADDED, tokenizer=require(LLAMA_TOKENIZER))
    return model, ckpt, convert(ckpt, tmp / "lima.gguf", output_format="gguf")


def real_rows(params: dict) -> dict:
    """A padded checkpoint's parameters without the padding rows, as every export writes them."""
    used = PADDED.used_vocab_size
    return {**params, "embed": params["embed"][:used], "lm_head": params["lm_head"][:, :used]}


def test_export_reads_back_with_the_gguf_reader(fine_tuned):
    model, _, out = fine_tuned
    reader = gguf.GGUFReader(out)
    meta = {f.name: f.contents() for f in reader.fields.values()}
    expected = {
        "general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
        "llama.feed_forward_length": 96, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.context_length": 64, "llama.rope.dimension_count": 16, "llama.vocab_size": 32001,
        "llama.rope.freq_base": 10000.0, "general.file_type": int(gguf.LlamaFileType.ALL_F32),
        # The EOT is eos as well (transformers reads eos alone); LLaMA's </s> is kept for our import.
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 32000,
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.eot_token_id": 32000, "lima.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)

    sp = text_tokenizers.load(require(LLAMA_TOKENIZER)).sp
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == len(meta["tokenizer.ggml.scores"]) == 32001
    assert tokens[:32000] == [sp.id_to_piece(i) for i in range(32000)]
    assert (tokens[32000], types[32000], types[1], types[0], types[100], types[1000]) == (NEW_EOT, 3, 3, 2, 6, 1)
    rendered = jinja2.Template(meta["tokenizer.chat_template"]).render(
        messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], bos_token="<s>")
    assert rendered == f"<s>Hi{NEW_EOT}Hello{NEW_EOT}"

    state = hf_state(model)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {gguf_name(k) for k in state}
    for name, w in state.items():
        t = tensors[gguf_name(name)]
        assert tuple(reversed(t.shape.tolist())) == w.shape and t.tensor_type == Q.F32, name
    np.testing.assert_array_equal(tensors["blk.1.attn_k.weight"].data, llama_cpp_permute(state["model.layers.1.self_attn.k_proj.weight"], 2))
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"].data, llama_cpp_permute(state["model.layers.0.self_attn.q_proj.weight"], 4))
    np.testing.assert_array_equal(tensors["output.weight"].data, state["lm_head.weight"])


def test_export_loads_in_transformers_gguf_loader(fine_tuned):
    """transformers reads GGUF by llama.cpp's conventions on its own (names, q/k permutation, metadata,
    the sentencepiece vocabulary): our export must load there to the fine-tune's logits and tokens."""
    pytest.importorskip("accelerate", reason="transformers loads GGUF files through accelerate")
    model, _, out = fine_tuned
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
    tokens = np.random.default_rng(5).integers(0, LIMA.vocab_size, (2, 9))
    np.testing.assert_allclose(hf_logits(loaded, tokens), hf_logits(model, tokens), atol=1e-5, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    original = text_tokenizers.load(require(LLAMA_TOKENIZER))
    assert (tok.bos_token_id, tok.eos_token_id, tok.convert_ids_to_tokens(32000)) == (1, 32000, NEW_EOT)
    assert loaded.generation_config.eos_token_id == 32000  # where `generate` stops
    for text in ["Hello world!", "ünïcödé 日本語 🙂 tabs\tand\nnewlines"]:
        assert tok(text, add_special_tokens=False).input_ids == original.encode(text), text


def test_export_then_import_gives_the_same_model_and_tokenizer(fine_tuned, tmp_path):
    _, ckpt, out = fine_tuned
    back = convert(out, tmp_path / "back")
    cfg, params = checkpoint.load_params(ckpt)
    got_cfg, got = checkpoint.load_params(back)
    assert got_cfg == LIMA  # the padding rows stay behind
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(real_rows(params))):
        np.testing.assert_array_equal(a, b)
    tokens = np.random.default_rng(2).integers(0, LIMA.vocab_size, (2, 9))
    np.testing.assert_allclose(np.asarray(model_from_params(got_cfg, got)(tokens)),
                               np.asarray(model_from_params(cfg, params)(tokens))[..., : LIMA.vocab_size], atol=1e-6, rtol=0)
    # The rebuilt sentencepiece model reads as a LIMA fine-tune's: 32000 pieces, EOT the row past them.
    original, rebuilt = ChatTokenizer(require(LLAMA_TOKENIZER)), ChatTokenizer(checkpoint.tokenizer_path(back))
    assert (rebuilt.num_pieces, rebuilt.eot_id, rebuilt.bos_id, rebuilt.eos_id) == (32000, 32000, 1, 2)
    for text in ["Hello world!", "  two  spaces, tabs\tand\nnewlines", "ünïcödé 日本語 🙂", "3.14159 <s> </s>"]:
        assert rebuilt.encode_text(text) == original.encode_text(text), text
        assert rebuilt.text.decode(original.encode_text(text)) == original.text.decode(original.encode_text(text))


def test_a_base_model_keeps_its_eos_and_names_no_eot(tmp_path):
    """No EOT (the model has the tokenizer's rows only, no run record): eos is the tokenizer's own, in and out."""
    from lima_jax.weights import gguf as gguf_format

    path = demo_dir() / "tokenizer.model"
    cfg = CFG.replace(vocab_size=text_tokenizers.load(path).num_ids)
    state = hf_state(random_hf_model(cfg, seed=8))
    out = gguf_format.write(tmp_path / "base.gguf", params_from_hf(list(state), state.__getitem__, cfg, source="hf"), cfg,
                            tokenizer=path)
    meta = {f.name: f.contents() for f in gguf.GGUFReader(out).fields.values()}
    assert (meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.bos_token_id"]) == (2, 1)
    assert not {"tokenizer.ggml.eot_token_id", "lima.eos_token_id", "tokenizer.chat_template"} & set(meta)
    back = convert(out, tmp_path / "back")
    assert checkpoint.load_params(back)[0] == cfg
    assert text_tokenizers.load(checkpoint.tokenizer_path(back)).eos_id == 2


@pytest.mark.parametrize("dtype, qtype", [("float16", Q.F16), ("bfloat16", Q.BF16)])
def test_half_precision_export_keeps_its_bits(fine_tuned, tmp_path, dtype, qtype):
    _, ckpt, _ = fine_tuned
    out = convert(ckpt, tmp_path / "half.gguf", output_format="gguf", dtype=dtype)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert {n for n, t in types.items() if t == Q.F32} == {n for n in types if "norm" in n}  # llama.cpp keeps norms F32
    assert {t for n, t in types.items() if "norm" not in n} == {qtype}
    _, params = checkpoint.load_params(ckpt)
    back = convert(out, tmp_path / "back")
    assert {str(d) for d in jax.tree.leaves(checkpoint.stored_dtypes(back))} == {dtype}  # norms narrowed back, exactly
    for a, b in zip(jax.tree.leaves(checkpoint.load_params(back)[1]), jax.tree.leaves(real_rows(params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(dtype).astype(np.float32))


def trained_bpe(specials: list[str]):
    """A small Llama 3-style byte-level BPE (split by Llama 3's pattern), trained here."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(text_tokenizers.LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["The quick brown fox jumps over the lazy dog.", "Hello, world! 12345 naïve café", "def f(x):\n    return x * 2\n"]
    tok.train_from_iterator(text * 20, trainer)
    return tok


def byte_level_bpe(folder) -> None:
    """A tokenizer.json folder with its config: BOS, EOS, Llama 3's <|eot_id|> and a chat template."""
    tok = trained_bpe(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        '{"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}<|eot_id|>{% endfor %}"}')


def test_byte_level_bpe_tokenizer_round_trips(tmp_path):
    """tokenizer.ggml.model=gpt2: tokens, merges and the named pre-tokenizer out, a tokenizer.json back
    that encodes as the original; a reused EOT (`<|eot_id|>`) and the tokenizer's own chat template."""
    from lima_jax.weights import gguf as gguf_format

    byte_level_bpe(tmp_path / "tok")
    original = text_tokenizers.load(tmp_path / "tok")
    cfg = CFG.replace(vocab_size=original.num_ids)
    state = hf_state(random_hf_model(cfg, seed=4))
    params = params_from_hf(list(state), state.__getitem__, cfg, source="hf")
    eot = original.token_id("<|eot_id|>")
    out = gguf_format.write(tmp_path / "m.gguf", params, cfg, tokenizer=tmp_path / "tok", eot_id=eot, chat_format="template")
    meta = {f.name: f.contents() for f in gguf.GGUFReader(out).fields.values()}
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"], meta["tokenizer.ggml.eot_token_id"]) == ("gpt2", "llama-bpe", eot)
    assert meta["tokenizer.ggml.tokens"][:3] == ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    assert meta["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]
    merges = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in merges] and len(merges) > 50
    assert meta["tokenizer.chat_template"] == original.chat_template

    back = convert(out, tmp_path / "back")
    rebuilt = text_tokenizers.load(checkpoint.tokenizer_path(back))
    assert (rebuilt.num_ids, rebuilt.bos_id, rebuilt.eos_id, rebuilt.chat_template) == (
        original.num_ids, original.bos_id, original.eos_id, original.chat_template)
    for text in ["The lazy fox, 2024!", "naïve  café\n\tdef g(y): return y", "unseen: жук 🙂 <|eot_id|>"]:
        assert rebuilt.encode(text) == original.encode(text), text
        assert rebuilt.decode(original.encode(text)) == text


def test_llama3_tiktoken_tokenizer_exports_as_byte_level_bpe(tmp_path, monkeypatch):
    """Meta's tiktoken file: its ranks written as tokens and the merges they imply (the merges
    transformers' TikTokenConverter derives), Meta's special tokens as control tokens past them."""
    import base64

    from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode

    from lima_jax.weights import gguf as gguf_format

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken caches files by path name: read this one
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab = trained_bpe([]).get_vocab()
    path = tmp_path / "tokenizer.model"
    path.write_text("".join(f"{base64.b64encode(bytes(to_byte[c] for c in t)).decode()} {r}\n"
                            for t, r in sorted(vocab.items(), key=lambda kv: kv[1])))
    original = text_tokenizers.load(path)
    assert original.kind == "tiktoken"
    cfg = CFG.replace(vocab_size=original.num_ids)
    state = hf_state(random_hf_model(cfg, seed=6))
    eot = original.token_id("<|eot_id|>")
    out = gguf_format.write(tmp_path / "m.gguf", params_from_hf(list(state), state.__getitem__, cfg, source="hf"), cfg,
                            tokenizer=path, eot_id=eot)
    meta = {f.name: f.contents() for f in gguf.GGUFReader(out).fields.values()}
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"], meta["tokenizer.ggml.eot_token_id"]) == ("gpt2", "llama-bpe", eot)
    assert (meta["tokenizer.ggml.tokens"][eot], meta["tokenizer.ggml.token_type"][eot]) == ("<|eot_id|>", 3)
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"], meta["lima.eos_token_id"]) == (
        original.bos_id, eot, original.eos_id)
    reference = json.loads(TikTokenConverter(vocab_file=str(path)).converted().to_str())["model"]
    assert meta["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in reference["merges"]]
    assert meta["tokenizer.ggml.tokens"][: len(vocab)] == sorted(reference["vocab"], key=reference["vocab"].get)

    rebuilt = text_tokenizers.load(checkpoint.tokenizer_path(convert(out, tmp_path / "back")))
    assert (rebuilt.num_ids, rebuilt.bos_id, rebuilt.eos_id, rebuilt.token_id("<|eot_id|>")) == (
        original.num_ids, original.bos_id, original.eos_id, eot)
    for text in ["The lazy fox, 2024!", "naïve  café\n\tdef g(y): return y", "unseen: жук 🙂 <|eot_id|>"]:
        assert rebuilt.encode(text) == original.encode(text), text
        assert rebuilt.decode(original.encode(text)) == text


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "not.gguf").write_bytes(b"GGML" + bytes(64))
    with pytest.raises(LimaError, match=r"not\.gguf: not a GGUF file"):
        convert(tmp_path / "not.gguf", tmp_path / "out")
    state = hf_state(random_hf_model(CFG))
    writer = gguf.GGUFWriter(str(tmp_path / "qwen.gguf"), "qwen2")
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(LimaError, match=r"qwen\.gguf: general\.architecture 'qwen2' is not supported"):
        convert(tmp_path / "qwen.gguf", tmp_path / "out")
    write_gguf(tmp_path / "m.gguf", {**state, "model.layers.0.self_attn.q_proj.weight": state["model.layers.0.self_attn.q_proj.weight"][:32]}, CFG)
    with pytest.raises(LimaError, match=r"tensor model\.layers\.0\.self_attn\.q_proj\.weight: expected shape \(64, 64\), found \(32, 64\)"):
        convert(tmp_path / "m.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()

    write_gguf(tmp_path / "plain.gguf", state, CFG)  # no vocabulary in the file: the checkpoint has no tokenizer
    ckpt = convert(tmp_path / "plain.gguf", tmp_path / "ckpt")
    assert checkpoint.tokenizer_path(ckpt) is None
    r = subprocess.run([sys.executable, "-m", "lima_jax.convert", f"--input={ckpt}", "--output_format=gguf",
                        f"--output={tmp_path}/x.gguf"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "error: --output_format=gguf needs the tokenizer (llama.cpp reads it from the file): pass --tokenizer")
    assert not list(tmp_path.glob("x.gguf*"))


@pytest.mark.parametrize("change, named", [
    (dict(family="qwen2", qkv_bias=True), "the qwen2 family and attention biases"),
    (dict(rope_scaling="llama3"), "llama3 rope scaling"),
])
def test_export_refuses_what_llama_cpp_names_otherwise(tmp_path, change, named):
    from lima_jax.weights import gguf as gguf_format

    cfg = CFG.replace(**change)  # refused before the weights are read
    with pytest.raises(LimaError, match=f"this one has {named}: export --output_format=hf"):
        gguf_format.write(tmp_path / "m.gguf", {}, cfg, tokenizer=require(LLAMA_TOKENIZER),
                          names={"output_format": "--output_format"})  # as the convert command names it
    assert not list(tmp_path.glob("m.gguf*"))


def instruct_gguf(tmp_path):
    """A converted instruct model (its tokenizer's template closes turns with <|eot_id|>) exported to GGUF
    without a run record, and the HF folder it came from."""
    byte_level_bpe(tmp_path / "hf")
    cfg = CFG.replace(vocab_size=text_tokenizers.load(tmp_path / "hf").num_ids)
    random_hf_model(cfg, seed=7).save_pretrained(tmp_path / "hf")
    return convert(convert(tmp_path / "hf", tmp_path / "ckpt"), tmp_path / "m.gguf", output_format="gguf"), tmp_path / "hf"


def test_converted_instruct_model_exports_its_own_template_and_end_of_turn(tmp_path):
    out, hf = instruct_gguf(tmp_path)
    original = text_tokenizers.load(hf)
    meta = {f.name: f.contents() for f in gguf.GGUFReader(out).fields.values()}
    assert (meta["tokenizer.ggml.eot_token_id"], meta["tokenizer.chat_template"]) == (
        original.token_id("<|eot_id|>"), original.chat_template)


def test_unknown_pre_tokenizer_is_refused_with_the_tokenizer_flag_to_pass(tmp_path):
    """A real GGUF may name a pre-tokenizer llama.cpp knows and we do not (Smaug's `smaug-bpe`, ...):
    the refusal says how to convert it anyway, with the model's own tokenizer.json."""
    out, hf = instruct_gguf(tmp_path)
    data = out.read_bytes()
    assert data.count(b"llama-bpe") == 1  # the tokenizer.ggml.pre value; a name of the same length keeps the file valid
    (tmp_path / "smaug.gguf").write_bytes(data.replace(b"llama-bpe", b"smaug-bpe"))
    with pytest.raises(LimaError, match=r"smaug\.gguf: tokenizer\.ggml\.pre 'smaug-bpe' is not supported .*"
                                        r"convert with --tokenizer=PATH of the model's tokenizer\.json"):
        convert(tmp_path / "smaug.gguf", tmp_path / "back")
    back = convert(tmp_path / "smaug.gguf", tmp_path / "back", tokenizer=hf / "tokenizer.json")
    assert text_tokenizers.load(checkpoint.tokenizer_path(back)).chat_template == text_tokenizers.load(hf).chat_template


def digit_split_bpe(folder, pre) -> None:
    """A byte-level BPE whose merges were trained without splitting digits (numbers are in its vocabulary
    whole), read through `pre`: with SmolLM's Digits + ByteLevel only that rule keeps "2024" apart."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["In 2024 we paid 1234.56 for 12 apples.", "The year 2023 had 365 days; 1234 is a number.", "Hello, world! naïve café"]
    tok.train_from_iterator(text * 20, trainer)
    tok.pre_tokenizer = pre
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}')


def export_with(folder, out):
    """A random tiny base model with `folder`'s tokenizer, exported to GGUF at `out`."""
    from lima_jax.weights import gguf as gguf_format

    cfg = CFG.replace(vocab_size=text_tokenizers.load(folder).num_ids)
    state = hf_state(random_hf_model(cfg, seed=9))
    return gguf_format.write(out, params_from_hf(list(state), state.__getitem__, cfg, source="hf"), cfg, tokenizer=folder)


DIGITS = ["In 2024 we paid 1234.56", "call 555-0199 or ٣٤٥ (Arabic-Indic digits)", "v2.0.1, x86_64 and 10,000,000"]


def test_smollms_digit_splitting_exports_as_smollm_and_imports_back(tmp_path):
    """SmolLM/SmolLM2's tokenizer.json: Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)], which
    llama.cpp names "smollm" (each \\p{N} alone, then GPT-2's split); written as "gpt-2", numbers would merge."""
    from tokenizers import Tokenizer, pre_tokenizers

    digit_split_bpe(tmp_path / "tok", pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]))
    original = text_tokenizers.load(tmp_path / "tok")
    gpt2 = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert gpt2.encode(DIGITS[0]).ids != original.encode(DIGITS[0])  # the rule changes the ids: the test can fail
    out = export_with(tmp_path / "tok", tmp_path / "m.gguf")
    assert field_of(out, "tokenizer.ggml.pre") == "smollm"
    for name in ("smollm", "refact"):  # and one of llama.cpp's other names for the same regexes
        data = out.read_bytes()
        (tmp_path / f"{name}.gguf").write_bytes(data.replace(b"smollm", name.encode()))
        rebuilt = text_tokenizers.load(checkpoint.tokenizer_path(convert(tmp_path / f"{name}.gguf", tmp_path / name)))
        for text in DIGITS + ["Hello, world! naïve café"]:
            assert rebuilt.encode(text) == original.encode(text), (name, text)
            assert rebuilt.decode(original.encode(text)) == text


def field_of(path, key):
    return gguf.GGUFReader(path).get_field(key).contents()


@pytest.mark.parametrize("pre, named", [
    ("split", r"Sequence\[Split\('\\\\p\{N\}\{1,3\}', isolated\), ByteLevel\(add_prefix_space=False, use_regex=True\)\]"),
    ("llama3_digits", r"Sequence\[Split\(.*\), Digits\(individual_digits=True\), ByteLevel\(.*use_regex=False\)\]"),
], ids=["split", "llama3_digits"])
def test_a_pre_tokenizer_llama_cpp_names_otherwise_is_refused_in_one_line(tmp_path, pre, named):
    """Nothing llama.cpp names splits as these do (Llama 3's regex followed by single digits is not "llama-bpe"):
    refused, naming the pre-tokenizer, rather than written as the nearest name."""
    from tokenizers import Regex, pre_tokenizers

    parts = {"split": [pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated"),
                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)],
             "llama3_digits": [pre_tokenizers.Split(Regex(text_tokenizers.LLAMA3_PATTERN), behavior="isolated"),
                               pre_tokenizers.Digits(individual_digits=True),
                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]}[pre]
    digit_split_bpe(tmp_path / "tok", pre_tokenizers.Sequence(parts))
    with pytest.raises(LimaError, match=rf"^tokenizer {tmp_path}/tok: its pre-tokenizer {named} splits text as no "
                                        r"pre-tokenizer llama\.cpp names \(.*smollm.*\) does$"):
        export_with(tmp_path / "tok", tmp_path / "m.gguf")
    assert not list(tmp_path.glob("m.gguf*"))
