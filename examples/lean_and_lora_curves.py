"""The tiny config's loss curves of the one-accelerator modes (README, "One accelerator"): a full fine-tune
in fp32 and in bf16 (`optim.narrow_params`, `optim.moments_dtype`), and LoRA rank 8 on stories260K with its
frozen base in float32, bf16, int8 and NF4. Prints one JSON line per run: dev loss after each epoch, the
last epoch's mean training loss, the LoRA start-up line (trained weights, the frozen base's bytes).

    python examples/lean_and_lora_curves.py --epochs=5          # both tables, about 10 minutes on 2 cores
"""
import argparse
import contextlib
import io
import json
import pathlib
import subprocess
import sys
import tempfile

from lima_jax.config import load_config
from lima_jax.data import demo_dir
from lima_jax.train.loop import train

STORIES = pathlib.Path(__file__).resolve().parent / "stories260k" / "stories260K.bin"
FULL = {
    "fp32": {},
    "bf16 + fp32 master": {"model.param_dtype": "bfloat16"},
    "bf16 + fp32 master, bf16 moments": {"model.param_dtype": "bfloat16", "optim.moments_dtype": "bfloat16"},
    "bf16 stochastic rounding, bf16 moments": {"model.param_dtype": "bfloat16", "optim.narrow_params": "stochastic",
                                               "optim.moments_dtype": "bfloat16"},
    "bf16 nearest rounding": {"model.param_dtype": "bfloat16", "optim.narrow_params": "nearest"},
}


def run(name: str, epochs: int, overrides: dict) -> None:
    workdir = tempfile.mkdtemp() + "/run"
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        train(load_config("tiny", {"workdir": workdir, "num_epochs": epochs, "checkpoint.async_save": False, **overrides}))
    records = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
    steps = [r["loss"] for r in records if "loss" in r]
    per_epoch = len(steps) // epochs
    print(json.dumps({"run": name, "dev_loss": [round(r["dev_loss"], 4) for r in records if "dev_loss" in r],
                      "last_epoch_train_loss": round(sum(steps[-per_epoch:]) / per_epoch, 4),
                      "lora": next((line for line in said.getvalue().splitlines() if line.startswith("LoRA")), None)}),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    epochs = parser.parse_args().epochs
    for name, overrides in FULL.items():
        run(name, epochs, overrides)
    base = tempfile.mkdtemp() + "/stories260k"
    subprocess.run([sys.executable, "-m", "lima_jax.convert", f"--input={STORIES}", f"--output={base}"], check=True)
    for dtype in ("float32", "bfloat16", "int8", "nf4"):  # the demo's tokenizer: stories260K ships without its own
        run(f"LoRA r8, {dtype} base", epochs, {"init_checkpoint": base, "data.tokenizer": str(demo_dir() / "tokenizer.model"),
                                              "model.tie_embeddings": True, "lora.rank": 8, "lora.base_dtype": dtype})


if __name__ == "__main__":
    main()
