"""The chat loop: LIMA's format turn after turn, /reset forgets, /quit leaves."""
import subprocess
import sys

from support.commands import command_line
from support.hf_reference import random_hf_model
from support.models import converted_checkpoint

from lima_jax.inference.chat import chat
from lima_jax.weights.convert import convert
from lima_jax.data import demo_dir
from lima_jax.model import ModelConfig
from lima_jax.inference.generator import Generator
from lima_jax.inference.sampler import SamplingParams


def recording(ckpt) -> tuple[Generator, list]:
    """The checkpoint's generator, and the prompts it is given as it is given them."""
    prompts = []

    class Recording(Generator):
        def __call__(self, p, params, seed):
            prompts.append(p[0])
            return super().__call__(p, params, seed)

    return Recording(str(ckpt)), prompts


def test_chat_keeps_history_until_reset(tmp_path):
    # A "fine-tuned" model: the demo tokenizer's 512 pieces plus EOT.
    cfg = ModelConfig(vocab_size=513, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64, max_len=256)
    random_hf_model(cfg).save_pretrained(tmp_path / "hf")
    ckpt = convert(tmp_path / "hf", tmp_path / "ckpt", tokenizer=demo_dir() / "tokenizer.model")
    generator, prompts = recording(ckpt)
    assert generator.eot_id == 512 and generator.stop_ids == (512, 2)
    out = []
    chat(generator, iter(["What is 2 plus 2?\n", "And 3 plus 3?\n", "/reset\n", "Hi\n", "/quit\n", "never read\n"]),
         out.append, SamplingParams(max_new_tokens=6), seed=0)
    tok = generator.tokenizer
    assert len(prompts) == 3 and sum(line.startswith("assistant: ") for line in out) == 3
    assert prompts[0] == tok.encode_prompt(["What is 2 plus 2?"])
    first_answer = out[1][len("assistant: "):-1]
    assert prompts[1] == tok.encode_prompt(["What is 2 plus 2?", first_answer, "And 3 plus 3?"])
    assert prompts[2] == tok.encode_prompt(["Hi"])  # /reset forgot the first conversation


def test_chat_refuses_a_base_model(tmp_path):
    cfg = ModelConfig(vocab_size=512, dim=32, num_layers=1, num_heads=4, num_kv_heads=2, ffn_dim=64)
    random_hf_model(cfg).save_pretrained(tmp_path / "hf")
    ckpt = convert(tmp_path / "hf", tmp_path / "ckpt", tokenizer=demo_dir() / "tokenizer.model")
    r = subprocess.run([sys.executable, "-m", "lima_jax.chat", f"--checkpoint={ckpt}"], input="", capture_output=True, text=True)
    assert r.returncode == 2 and "end-of-turn" in r.stderr.strip().splitlines()[-1]


def test_chat_says_a_line_is_not_valid_utf8_and_goes_on(tmp_path):
    """A line of bytes that are not UTF-8 ended the session with a UnicodeDecodeError traceback."""
    ckpt = converted_checkpoint(tmp_path, 513)
    r = subprocess.run(command_line("chat", f"--checkpoint={ckpt}", "--max_new_tokens=3"),
                       input=b"Hi\n\xff\xfe caf\xe9\nName a color.\n/quit\n", capture_output=True)
    out = r.stdout.decode().splitlines()
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert sum(line.startswith("assistant: ") for line in out) == 2
    assert "(that line is not valid UTF-8 (byte 0xff at column 1): type it again)" in out


def test_chat_reports_a_message_past_the_context_and_goes_on(tmp_path):
    """A message longer than the model's context was sampled past it; now it is refused in one line
    naming its tokens and the context, and the conversation goes on without it."""
    ckpt = converted_checkpoint(tmp_path, 513, max_len=32)
    generator, prompts = recording(ckpt)
    long = "seven " * 40
    out = []
    chat(generator, iter(["Hi\n", long + "\n", "Name a color.\n"]), out.append, SamplingParams(max_new_tokens=4), seed=0)
    n = len(generator.tokenizer.encode_prompt([long]))
    assert out[2] == (f"(that message has {n} tokens; this model's maximum context length is 32 tokens, the prompt "
                      "and at least one new token: shorten it)\n")
    assert sum(line.startswith("assistant: ") for line in out) == 2
    first_answer = out[1][len("assistant: "):-1]
    assert prompts[1] == generator.tokenizer.encode_prompt(["Hi", first_answer, "Name a color."])
