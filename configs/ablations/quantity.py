"""LIMA §5, Figure 6 (quantity): 2K, 4K, 8K, 16K and 32K examples of filtered Stack Exchange, at 7B.

The draws are nested (one seeded permutation of data/se_filtered.jsonl: each arm trains on its first N
examples, all share the dev set at its end), so a larger arm only adds data. The paper found that the
score plateaus.

    python -m lima_jax.ablate --grid=configs/ablations/quantity.py \
        --grid.train.init_checkpoint=/ckpt/llama-7b --grid.test_prompts=/data/lima/test.jsonl
"""
from lima_jax.ablate.plan import paper_grid


def get_config():
    return paper_grid("quantity", {f"se_{n:02d}k": {"data": "data/se_filtered.jsonl", "size": n * 1000}
                                   for n in (2, 4, 8, 16, 32)})
