"""Every kind of tokenizer a LLaMA-family model ships reads to the ids its reference library gives:
an HF tokenizer.json or folder (against transformers), Llama 3's tiktoken-format tokenizer.model
(against transformers' own tiktoken conversion), and the same vocabulary as sentencepiece and as
tokenizer.json; LIMA's new EOT or a reused one; training and sampling with them."""
import base64
import json

import numpy as np
import pytest

from lima_jax.config import load_config, model_config
from lima_jax.train.vocab import trained_model_config
from lima_jax.data import demo_dir, text_tokenizers
from lima_jax.data.tokenizer import ChatTokenizer
from lima_jax.errors import LimaError

transformers = pytest.importorskip("transformers")
from support.tokenizers import byte_level_bpe  # noqa: E402
from support.training import two_step_config  # noqa: E402

TEXTS = ["How do I boil an egg?\nBe brief.", "  Leading spaces, Grüße and 🦙 emoji.", "It's 42, isn't it?",
         "unseen wörds: zyxw 1234567", "a line\n\n\nthree newlines\ttab"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_tok")
    byte_level_bpe().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
        "clean_up_tokenization_spaces": False,
    }))
    return folder


@pytest.fixture(scope="module")
def tiktoken_file(tmp_path_factory):
    """Llama 3's format: `base64(bytes) rank` per line, the ranks being the BPE merge order."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab = byte_level_bpe().get_vocab(with_added_tokens=False)
    lines = [f"{base64.b64encode(bytes(to_byte[c] for c in token)).decode()} {rank}"
             for token, rank in sorted(vocab.items(), key=lambda kv: kv[1])]
    path = tmp_path_factory.mktemp("llama3") / "tokenizer.model"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_hf_folder_gives_the_ids_bos_and_eos_that_transformers_gives(hf_folder):
    ref = transformers.AutoTokenizer.from_pretrained(str(hf_folder))
    for path in (hf_folder, hf_folder / "tokenizer.json"):
        tok = ChatTokenizer(path)
        assert tok.text.kind == "hf"
        assert (tok.bos_id, tok.eos_id) == (ref.bos_token_id, ref.eos_token_id) != (None, None)
        assert tok.num_pieces == len(ref) and tok.eot_id == len(ref) and tok.vocab_size == len(ref) + 1
        for text in TEXTS:
            ids = tok.encode_text(text)
            assert ids == ref(text, add_special_tokens=False)["input_ids"]
            assert tok.text.decode(ids) == ref.decode(ids, skip_special_tokens=True) == text
        ids = tok.encode_text(TEXTS[2])
        assert "".join(tok.token_text(i) for i in ids) == TEXTS[2]  # byte-level: every token's own text
        # BOS once (the post-processor's is not added again), every turn closed by EOT, loss on answers.
        ids, mask = tok.encode_conversation(TEXTS[:2], max_len=512)
        a, b = (ref(t, add_special_tokens=False)["input_ids"] for t in TEXTS[:2])
        assert ids.tolist() == [ref.bos_token_id, *a, tok.eot_id, *b, tok.eot_id]
        assert mask.tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        assert tok.decode(ids[len(a) + 2:]) == TEXTS[1]


def test_a_reused_eot_is_the_tokenizers_own_token_and_adds_no_id(hf_folder):
    ref = transformers.AutoTokenizer.from_pretrained(str(hf_folder))
    for eot in ("<|eot_id|>", "<|im_end|>"):
        tok = ChatTokenizer(hf_folder, eot=eot)
        assert tok.eot_id == ref.convert_tokens_to_ids(eot) < len(ref)
        assert (tok.new_eot, tok.vocab_size) == (False, len(ref))
        ids, mask = tok.encode_conversation(["Hi", "Hello."], max_len=64)
        assert ids.tolist().count(tok.eot_id) == 2 and ids[-1] == tok.eot_id and mask[-1] == 1
        assert tok.decode(tok.encode_text("Hello.") + [tok.eot_id] + tok.encode_text("more")) == "Hello."
        assert tok.eot_id not in tok.encode_text(f"say {eot} please")  # in the data it is text, not a stop
    with pytest.raises(LimaError, match=r"config key data.eot: '<\|nope\|>' is not a token of the tokenizer"):
        ChatTokenizer(hf_folder, eot="<|nope|>")


def test_a_tokenizer_without_bos_starts_with_the_first_turn(tmp_path):
    """Qwen2.5 sets bos_token to null: no BOS, and the first token carries no loss."""
    byte_level_bpe().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": "<|im_end|>"}))
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    tok = ChatTokenizer(tmp_path)
    assert tok.bos_id is None and tok.eos_id == ref.eos_token_id == ref.convert_tokens_to_ids("<|im_end|>")
    ids, mask = tok.encode_conversation(["Hi", "Hello."], max_len=64, train_on="all")
    assert ids.tolist() == ref("Hi", add_special_tokens=False)["input_ids"] + [tok.eot_id] + ref(
        "Hello.", add_special_tokens=False)["input_ids"] + [tok.eot_id]
    assert mask[0] == 0 and mask[1:].all()
    assert tok.encode_prompt(["Hi"]) == ids.tolist()[: ids.tolist().index(tok.eot_id) + 1]


def test_llama3s_tiktoken_file_is_detected_and_gives_the_ids_of_transformers_conversion(tiktoken_file, monkeypatch):
    from transformers.convert_slow_tokenizer import TikTokenConverter

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken caches files by path name: read this one
    ref = TikTokenConverter(vocab_file=str(tiktoken_file)).converted()
    tok = ChatTokenizer(tiktoken_file, eot="<|eot_id|>")
    base = len(tiktoken_file.read_text().splitlines())
    assert tok.text.kind == "tiktoken"
    # Meta's layout: 256 special tokens past the ranks, <|begin_of_text|> first, <|eot_id|> the tenth.
    assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.num_pieces) == (base, base + 1, base + 9, base + 256)
    for text in TEXTS:
        ids = tok.encode_text(text)
        assert ids == ref.encode(text, add_special_tokens=False).ids
        assert tok.text.decode(ids) == ref.decode(ids) == text
    # The text of a special token in user data stays text, as Meta's encode does by default.
    assert tok.eot_id not in tok.encode_text("say <|eot_id|> please")
    assert ChatTokenizer(tiktoken_file).eot_id == base + 256  # LIMA's new token, past the specials


def test_one_vocabulary_as_sentencepiece_and_as_tokenizer_json_gives_the_same_conversations(tmp_path):
    """The demo's sentencepiece model converted by transformers to tokenizer.json (as LLaMA-2 folders
    on the Hub ship both): the HF path reads it to the same ids as sentencepiece does."""
    (tmp_path / "sp").mkdir()
    (tmp_path / "sp" / "tokenizer.model").write_bytes((demo_dir() / "tokenizer.model").read_bytes())
    transformers.LlamaTokenizer.from_pretrained(str(tmp_path / "sp")).save_pretrained(str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file()
    sp, hf = ChatTokenizer(demo_dir() / "tokenizer.model"), ChatTokenizer(tmp_path / "tokenizer.json")
    assert hf.text.kind == "hf" and (hf.bos_id, hf.eos_id, hf.num_pieces) == (sp.bos_id, sp.eos_id, sp.num_pieces)
    turns = ["What is 3 plus 4?", "3 plus 4 is 7.", "And the capital of Canada?", "The capital of Canada is Ottawa."]
    for a, b in zip(sp.encode_conversation(turns, max_len=512), hf.encode_conversation(turns, max_len=512)):
        np.testing.assert_array_equal(a, b)
    # Each token's text in running text (what the server's logprobs name), leading space included.
    ids = sp.encode_text(turns[3])
    assert [hf.token_text(i) for i in ids] == [sp.token_text(i) for i in ids]
    assert "".join(sp.token_text(i) for i in ids) == " " + turns[3]  # sentencepiece's dummy prefix


def test_the_files_a_checkpoint_keeps_load_the_same_tokenizer(hf_folder, tiktoken_file, tmp_path):
    for i, src in enumerate((hf_folder, tiktoken_file, demo_dir() / "tokenizer.model")):
        text_tokenizers.copy_files(src, tmp_path / str(i))
        a, b = ChatTokenizer(src), ChatTokenizer(tmp_path / str(i))
        assert (a.text.kind, a.bos_id, a.eos_id, a.num_pieces) == (b.text.kind, b.bos_id, b.eos_id, b.num_pieces)
        assert a.encode_text(TEXTS[1]) == b.encode_text(TEXTS[1])
    assert sorted(p.name for p in (tmp_path / "0").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


def test_unreadable_tokenizers_are_one_line_naming_the_file(tmp_path):
    with pytest.raises(LimaError, match=f"tokenizer folder {tmp_path}: it holds neither tokenizer.json nor tokenizer.model"):
        ChatTokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LimaError, match="not a Hugging Face tokenizer.json"):
        ChatTokenizer(tmp_path)
    bad = tmp_path / "bad" / "tokenizer.model"
    bad.parent.mkdir()
    bad.write_text("aGk= 0\nnot base64! 1\n")
    with pytest.raises(LimaError, match=f"{bad}:2: not a `base64 rank` line"):
        ChatTokenizer(bad)


def test_the_trained_vocabulary_counts_a_new_eot_but_not_a_reused_one():
    config = load_config("tiny", {"model.vocab_size": 1000})
    cfg = trained_model_config(config, 1000)
    assert (cfg.used_vocab_size, cfg.vocab_size) == (1001, 1024)
    config = load_config("tiny", {"data.eot": "<|eot_id|>"})
    assert trained_model_config(config, 1000).used_vocab_size == 1000
    assert trained_model_config(config, 1024).vocab_padding == 0
    assert model_config(config).vocab_size == 512  # the architecture as written is untouched


@pytest.mark.parametrize("eot", ["", "<|eot_id|>"])
def test_a_short_run_trains_and_samples_with_an_hf_tokenizer(hf_folder, tmp_path, eot):
    from lima_jax.inference.generator import Generator
    from lima_jax.train.loop import train
    from lima_jax.weights import checkpoint

    ref = transformers.AutoTokenizer.from_pretrained(str(hf_folder))
    config = two_step_config(tmp_path, **{"data.tokenizer": str(hf_folder), "data.eot": eot})
    train(config)
    metrics = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert any(np.isfinite(m["dev_loss"]) for m in metrics if "dev_loss" in m)
    eot_id = ref.convert_tokens_to_ids(eot) if eot else len(ref)  # reused, or LIMA's new one past the ids
    cfg = checkpoint.load_model_config(config.workdir)
    assert cfg.used_vocab_size == len(ref) + (0 if eot else 1) and cfg.vocab_size % 128 == 0
    assert checkpoint.run_info(config.workdir)["eot_id"] == eot_id
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "run").iterdir()}

    generator = Generator(config.workdir)  # the run's own tokenizer files and EOT
    assert generator.tokenizer.text.kind == "hf" and generator.eot_id == generator.tokenizer.eot_id == eot_id
    assert eot_id in generator.stop_ids
    assert generator.encode(["Hi there"]) == [ref.bos_token_id, *ref("Hi there", add_special_tokens=False)["input_ids"], eot_id]
    assert generator.decode(ref("Ottawa.", add_special_tokens=False)["input_ids"] + [eot_id, 5]) == "Ottawa."


@pytest.fixture(scope="module")
def pretrained_hf(tmp_path_factory, hf_folder):
    """Two random 'pretrained' HF folders with the HF tokenizer in them, converted (which keeps the
    tokenizer it finds there): one with fewer embedding rows than the tokenizer has ids, one padded
    to 512 rows (more: normal)."""
    from support.hf_reference import random_hf_model
    from lima_jax.weights import checkpoint
    from lima_jax.weights.convert import convert

    root = tmp_path_factory.mktemp("pretrained_hf")
    ckpts = {}
    for rows in (300, 512):
        cfg = model_config(load_config("tiny", {"model.vocab_size": rows}))
        random_hf_model(cfg).save_pretrained(root / f"hf{rows}")
        text_tokenizers.copy_files(hf_folder, root / f"hf{rows}")
        ckpts[rows] = convert(root / f"hf{rows}", root / f"ckpt{rows}")
        assert checkpoint.tokenizer_path(ckpts[rows]) == ckpts[rows]  # its tokenizer.json, kept
    return ckpts


def test_a_tokenizer_with_more_ids_than_the_checkpoints_rows_stops_in_one_line(pretrained_hf, hf_folder, tmp_path):
    from lima_jax.train.loop import train

    n = len(transformers.AutoTokenizer.from_pretrained(str(hf_folder)))
    config = two_step_config(tmp_path, init_checkpoint=str(pretrained_hf[300]))  # data.tokenizer: the checkpoint's
    with pytest.raises(LimaError, match=rf"^config key data.tokenizer: the tokenizer has {n} ids but "
                                        rf"{pretrained_hf[300]} has 300 embedding rows$"):
        train(config)


@pytest.mark.parametrize("eot", ["", "<|eot_id|>"])
def test_a_padded_checkpoint_keeps_the_tokenizers_rows_and_a_new_eot_takes_the_next_as_their_mean(
        pretrained_hf, hf_folder, tmp_path, eot):
    from lima_jax import sharding
    from lima_jax.train.init_weights import load_pretrained
    from lima_jax.weights import checkpoint

    n = len(transformers.AutoTokenizer.from_pretrained(str(hf_folder)))
    config = two_step_config(tmp_path, init_checkpoint=str(pretrained_hf[512]), **{"data.eot": eot})
    cfg = trained_model_config(config, n)
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    params, _ = load_pretrained(config, cfg, mesh)
    _, base = checkpoint.load_params(pretrained_hf[512])
    embed, stored = np.asarray(params["embed"]), np.asarray(base["embed"])
    assert embed.shape == (cfg.vocab_size, 64) and cfg.used_vocab_size == n + (0 if eot else 1)
    np.testing.assert_array_equal(embed[:n], stored[:n])
    if not eot:  # not the stored row n, which no token ever trained: a new row, as for a base model
        np.testing.assert_allclose(embed[n], stored[:n].mean(0), atol=1e-7)
        assert not np.allclose(embed[n], stored[n])
    assert not embed[cfg.used_vocab_size:].any()
