"""lima_jax: LIMA's supervised fine-tuning recipe for LLaMA models, in JAX."""

from lima_jax.storage.emulator import use_storage_emulator
from lima_jax.tpu_probe import quiet_tpu_probe

# Before any lima_jax module imports JAX: without a TPU, keep libtpu's probe off stderr.
quiet_tpu_probe()
# Before TensorStore or gcsfs is imported: with STORAGE_EMULATOR_HOST set, all of gs:// goes there.
use_storage_emulator()

__version__ = "0.1.0"
