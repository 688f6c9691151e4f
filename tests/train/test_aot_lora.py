"""AOT compilation of LoRA and QLoRA steps for TPU topologies (needs the libtpu package): the proof of
fit for one accelerator, without the hardware."""
import json
import subprocess
import sys

from lima_jax.train.aot import parse_topology
from support.markers import needs_libtpu

TINY = ("--config=tiny", "--config.batch_size=8", "--config.data.max_len=128", "--config.grad_accum=2")


def _aot(*args):
    r = subprocess.run([sys.executable, "-m", "lima_jax.aot", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_one_chip_slices_are_named_by_their_tensorcores():
    assert parse_topology("v5p-2") == ("v5p", "v5p:1x1x1", 1)
    assert parse_topology("v4-2") == ("v4", "v4:1x1x1", 1)
    assert parse_topology("v6e-1") == ("v6e", "v6e:1x1", 1)


@needs_libtpu
def test_lora_and_qlora_steps_compile_with_the_base_frozen_and_nf4_holding_fewer_bytes():
    """Two subprocesses compiling the tiny step for v5p-8 (4 chips, fsdp 4: the quantized blocks are split
    over fsdp), 15-25 s each on this host: the bf16 and the NF4 base make two different programs."""
    bf16 = _aot(*TINY, "--topology=v5p-8", "--config.lora.rank=4", "--config.lora.base_dtype=bfloat16")
    nf4 = _aot(*TINY, "--topology=v5p-8", "--config.lora.rank=4", "--config.lora.base_dtype=nf4")
    for report in (bf16, nf4):
        b = report["per_chip_bytes"]
        assert report["fits"] and report["chips"] == 4 and report["grad_accum"] == 2
        assert b["total"] >= b["argument"] + b["temp"] > 0
        # The tiny vocabulary's 512 pieces + LIMA's EOT: the EOT row trains with the adapters.
        assert report["lora"]["rows"] == [512, 513] and report["lora"]["targets"] == "q,k,v,o,gate,up,down"
        # Only the adapters and the EOT rows train: a and b of 7 projections x 5 layers at rank 4, + 2 x 64.
        cfg_dims = {"wq": (64, 64), "wk": (64, 32), "wv": (64, 32), "wo": (64, 64), "w_gate": (64, 172),
                    "w_up": (64, 172), "w_down": (172, 64)}
        assert report["trained_params"] == 5 * 4 * sum(i + o for i, o in cfg_dims.values()) + 2 * 64
        # The frozen base is an argument: its shard on each chip, then the trained state's (params + 2 moments + step).
        assert b["argument"] >= b["frozen_base"] + b["trained_state"]
    # NF4: 0.5625 bytes per projection weight against bf16's 2 (embeddings and norms stay bf16).
    assert nf4["per_chip_bytes"]["frozen_base"] < 0.75 * bf16["per_chip_bytes"]["frozen_base"]
    assert nf4["per_chip_bytes"]["argument"] < bf16["per_chip_bytes"]["argument"]
    assert nf4["per_chip_bytes"]["trained_state"] == bf16["per_chip_bytes"]["trained_state"] > 0
    assert (bf16["lora"]["base_dtype"], nf4["lora"]["base_dtype"]) == ("bfloat16", "nf4")


def test_quantizing_a_stacked_base_holds_no_float32_copies_of_every_layer():
    """A QLoRA run quantizes its base on the device before the first step. Quantized in one go, a 7B base
    needed 53.8 GiB of temporaries on a v5p chip (float32 copies of every layer, several at once): more than
    the step itself, so QLoRA could not start on a 24 GB GPU; layer by layer, 0.67 GiB. XLA:CPU still hoists
    the float32 cast of the whole stack out of the loop (one copy), so the bound here is two copies: one go
    needed six."""
    import jax
    import jax.numpy as jnp

    from lima_jax.lora import quantize

    w = jax.ShapeDtypeStruct((32, 256, 512), jnp.bfloat16)
    temp = jax.jit(lambda w: quantize.quantize(w, "nf4")).lower(w).compile().memory_analysis().temp_size_in_bytes
    assert temp < 2 * w.size * 4
