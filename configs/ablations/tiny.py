"""The CPU-sized ablation: the tiny config on the demo data, two arms, a few epochs, K=2, a local judge.

    python -m lima_jax.ablate --grid=configs/ablations/tiny.py      # minutes on a laptop CPU

It shows the plumbing, not a result: the judge is the `demo` arm's own chosen checkpoint (a 64-wide
model reading Appendix D's template), and a few epochs of a from-scratch tiny model answer little.
Arms: all the demo conversations (less the dev set) against a seeded draw of 200 of them.
"""
from lima_jax.ablate.plan import grid_config
from lima_jax.data import demo_dir


def get_config():
    demo = str(demo_dir() / "train.jsonl")
    return grid_config(
        "tiny", "tiny",
        arms={"demo": {"data": demo, "size": 0}, "demo_200": {"data": demo, "size": 200}},
        train={"num_epochs": 3, "batch_size": 32, "data": {"max_len": 64, "dev_size": 8, "tokenizer": str(demo_dir() / "tokenizer.model")},
               "checkpoint": {"async_save": False}},
        workdir="runs/ablations/tiny",
        test_prompts=str(demo_dir() / "test.jsonl"), num_test_prompts=6, samples_per_prompt=2,
        checkpoint="dev_loss", judge={"checkpoint": "arm:demo", "workers": 1}, max_new_tokens=16,
    )
