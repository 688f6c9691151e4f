"""LIMA §5, Figure 5 (diversity): 2,000 examples of filtered Stack Exchange against 2,000 of wikiHow, at 7B.

The paper: filtered Stack Exchange 3.83, wikiHow 3.49.

    python -m lima_jax.ablate --grid=configs/ablations/diversity.py \
        --grid.train.init_checkpoint=/ckpt/llama-7b --grid.test_prompts=/data/lima/test.jsonl
"""
from lima_jax.ablate.plan import paper_grid


def get_config():
    return paper_grid("diversity", {"se_filtered": {"data": "data/se_filtered.jsonl", "size": 2000},
                                    "wikihow": {"data": "data/wikihow.jsonl", "size": 2000}})
