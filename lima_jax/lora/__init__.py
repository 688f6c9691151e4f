"""LoRA and QLoRA: low-rank adapters on a frozen, optionally quantized base."""
