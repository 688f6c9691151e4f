"""LoRA and QLoRA: low-rank adapters on a frozen, optionally quantized base.

The model applies each projection through `model.project`, which takes a plain weight or a structured
one that applies itself. In training, `adapters.wear` hands the model the frozen base (`base.frozen`:
as stored, bf16, or int8/NF4 blocks from `quantize`) with each targeted weight a `LoraWeight` (x W +
alpha/r * dropout(x) a b); only the adapters are differentiated and stepped. Everything that reads
weights merges them (`adapters.merge`).

Not qwix (Tunix's LoRA): it rewrites a Flax module's dot_generals by module path, while our layers run
stacked under `lax.scan` and decode through their own layout; a weight that applies itself keeps the
adapters in the parameter tree (sharded, saved and exported like any weight), with nothing between the
model and XLA."""
