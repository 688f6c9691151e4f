"""Any LLaMA-family checkpoint, with no config file of its own:

    python -m lima_jax.train --config=auto --config.init_checkpoint=CKPT [--config.data.manual_dir=...]

The architecture (every model key a checkpoint fixes) is read from `init_checkpoint` when the run
starts and printed; the batch size and top-layer dropout are LIMA's for the model's size (32 and 0.3
for 65B-class models, 64 and 0.2 for smaller ones; `lima_jax.recipe.recipe_for_size`); the compute dtype
and remat policy are the platform's (`lima_jax.recipe.PER_PLATFORM`). A
`--config.model.KEY=` that contradicts the checkpoint fails in one line; other keys override as usual.
"""
from lima_jax.recipe import auto_config


def get_config():
    return auto_config()
