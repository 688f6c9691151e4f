"""LIMA §5, Figure 5 (quality): 2,000 examples of filtered against unfiltered Stack Exchange, at 7B.

The paper's filtered arm scored 3.83 and the unfiltered one 3.33 (ChatGPT as the Likert judge). Build the
data with `python -m lima_jax.curate` (the README's "Data and ablations"), then:

    python -m lima_jax.ablate --grid=configs/ablations/quality.py \
        --grid.train.init_checkpoint=/ckpt/llama-7b --grid.test_prompts=/data/lima/test.jsonl

The settings common to the paper's grids are `lima_jax.ablate.plan.paper_grid`'s.
"""
from lima_jax.ablate.plan import paper_grid


def get_config():
    return paper_grid("quality", {"se_filtered": {"data": "data/se_filtered.jsonl", "size": 2000},
                                  "se_unfiltered": {"data": "data/se_unfiltered.jsonl", "size": 2000}})
