"""LIMA's chat tokenization: BOS, utterances each closed by a new EOT token, loss on the assistant."""
import numpy as np
import pytest

from support.paths import LLAMA_TOKENIZER, require
from lima_jax.data import demo_dir
from lima_jax.data.tokenizer import ChatTokenizer
from lima_jax.errors import LimaError

USER = "How do I boil an egg?\nBe brief."
ASSISTANT = "Put it in boiling water for 8 minutes, then cool it in cold water. 🥚"


@pytest.fixture(scope="module")
def llama():
    return ChatTokenizer(require(LLAMA_TOKENIZER))


def masked_runs(ids, mask):
    """The runs of consecutive loss-carrying ids."""
    runs, cur = [], []
    for i, m in zip(ids.tolist(), mask.tolist()):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def test_llama_ids(llama):
    assert (llama.bos_id, llama.eos_id, llama.eot_id, llama.vocab_size) == (1, 2, 32000, 32001)
    assert llama.eot_id != llama.eos_id


def test_only_assistant_tokens_and_their_eot_carry_loss(llama):
    ids, mask = llama.encode_conversation([USER, ASSISTANT], max_len=2048)
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape
    user_ids = llama.encode_text(USER)
    assistant_ids = llama.encode_text(ASSISTANT)
    assert ids.tolist() == [1, *user_ids, 32000, *assistant_ids, 32000]
    assert mask.tolist() == [0] * (len(user_ids) + 2) + [1] * (len(assistant_ids) + 1)
    (run,) = masked_runs(ids, mask)
    assert run[-1] == llama.eot_id
    assert llama.text.decode(run[:-1]) == ASSISTANT  # exactly the assistant text
    assert llama.decode(run) == ASSISTANT


def test_multi_turn_trains_every_assistant_turn(llama):
    turns = ["Hi", "Hello! How can I help?", "Tell me a joke.", "Why did the llama cross the road?", "Why?"]
    ids, mask = llama.encode_conversation(turns, max_len=2048)
    runs = masked_runs(ids, mask)
    assert [llama.decode(r) for r in runs] == [turns[1], turns[3]]
    assert all(r[-1] == llama.eot_id for r in runs)
    assert ids.tolist().count(llama.eot_id) == 5
    assert mask[-1] == 0  # the trailing user turn is context only


def test_train_on_all(llama):
    ids, mask = llama.encode_conversation([USER, ASSISTANT], max_len=2048, train_on="all")
    assert mask.tolist() == [0] + [1] * (len(ids) - 1)


def test_trimmed_to_max_len(llama):
    full, full_mask = llama.encode_conversation([USER, ASSISTANT * 20], max_len=10_000)
    ids, mask = llama.encode_conversation([USER, ASSISTANT * 20], max_len=37)
    assert len(ids) == len(mask) == 37
    np.testing.assert_array_equal(ids, full[:37])
    np.testing.assert_array_equal(mask, full_mask[:37])


def test_prompt_and_decode(llama):
    prompt = llama.encode_prompt([USER])
    assert prompt == [1, *llama.encode_text(USER), 32000]
    ids, _ = llama.encode_conversation([USER, ASSISTANT], max_len=2048)
    assert ids.tolist()[: len(prompt)] == prompt
    generated = llama.encode_text(ASSISTANT) + [llama.eot_id, 123, 456]
    assert llama.decode(generated) == ASSISTANT  # stops at EOT
    assert llama.decode(llama.encode_text("Hi there") + [llama.eos_id] + llama.encode_text("x")) == "Hi there"
    with pytest.raises(LimaError, match="must end with a user turn"):
        llama.encode_prompt([USER, ASSISTANT])


def test_errors(tmp_path, llama):
    with pytest.raises(LimaError, match="train_on must be one of assistant, all, got 'user'"):
        llama.encode_conversation(["a", "b"], max_len=16, train_on="user")
    missing = tmp_path / "nope" / "tokenizer.model"
    with pytest.raises(LimaError, match=f"tokenizer model {missing} not found"):
        ChatTokenizer(missing)
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(LimaError, match="not a sentencepiece or tiktoken model"):
        ChatTokenizer(tmp_path / "junk.model")


def test_demo_tokenizer():
    tok = ChatTokenizer(demo_dir() / "tokenizer.model")
    assert (tok.bos_id, tok.eos_id, tok.text.sp.unk_id(), tok.eot_id, tok.vocab_size) == (1, 2, 0, 512, 513)
    ids, mask = tok.encode_conversation(["What is 3 plus 4?", "3 plus 4 is 7."], max_len=512)
    (run,) = masked_runs(ids, mask)
    assert tok.decode(run) == "3 plus 4 is 7."
    assert tok.decode(tok.encode_text("Grüße\n🦙")) == "Grüße\n🦙"  # byte fallback: nothing is lost


def test_of_model_reads_an_instruct_template_only_where_no_lima_fine_tune_says_otherwise(tmp_path):
    """A template closing turns with <|eot_id|> makes a converted model an instruct one; a LIMA fine-tune
    of it (a run record, or the new EOT's extra row) keeps LIMA's format."""
    from support.tokenizers import LLAMA3, hf_folder

    from lima_jax.data.tokenizer import of_model

    folder = hf_folder(tmp_path / "tok", LLAMA3)
    n = ChatTokenizer(folder).num_pieces
    eot = ChatTokenizer(folder).text.token_id("<|eot_id|>")
    for used, run, expected in [(n, {}, (eot, "template")), (n + 1, {}, (n, "lima")),
                                (n + 1, {"eot_id": n, "chat_format": "lima"}, (n, "lima")),
                                (n, {"eot_id": eot, "chat_format": "lima"}, (eot, "lima"))]:
        tok, found = of_model(folder, used, run)
        assert (found, tok.chat_format) == expected, (used, run)
