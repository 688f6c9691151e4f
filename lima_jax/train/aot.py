"""Compile the real train step for a TPU slice on a CPU host, and report whether it fits (the
library behind `python -m lima_jax.aot`).

No TPU is needed: `jax.experimental.topologies` (backed by the `libtpu` package) describes the
slice's devices, the state and batch are abstract, and XLA compiles the step exactly as the slice
would. Prints one JSON object (per-chip bytes against the chip's HBM, compile seconds, XLA's cost
analysis) and exits 1 when the step does not fit.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from lima_jax.model import flops
from lima_jax.errors import LimaError
from lima_jax.model import param_count
from lima_jax.sharding import make_mesh
from lima_jax.model import attention
from lima_jax.lora import base as lora_base, spec as lora_spec
from lima_jax.lora.spec import LoraSpec
from lima_jax.model import ModelConfig, abstract_model
from lima_jax.train import optimizer as optim
from lima_jax.train.state import abstract_batch, abstract_state, jit_train_step, shardings_of, trained_dtype
from lima_jax.train.vocab import tokenizer_ids, tokenizer_pieces, trained_model_config

# Per generation: HBM per chip (GiB), TensorCores per chip as counted in slice names, and whether
# the chips form a 3-D torus (v4, v5p) or a 2-D grid (v5e, v6e).
CHIPS = {
    "v4": (32, 2, 3),
    "v5p": (95, 2, 3),
    "v5litepod": (16, 1, 2),
    "v5e": (16, 1, 2),
    "v6e": (32, 1, 2),
}


# Chip grids of the standard slice shapes: 3-D tori (v4, v5p) and 2-D grids (v5e, v6e).
GRID_3D = {1: "1x1x1", 4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
           512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


class BadTopology(LimaError):
    """A slice name that names no standard slice; the command that took it names its flag."""


def parse_topology(name: str) -> tuple[str, str, int]:
    """`v4-128` -> ('v4', 'v4:4x4x4', 64): slice names count TensorCores, two per v4/v5p chip."""
    generation, _, count = name.partition("-")
    if generation not in CHIPS or not count.isdigit():
        raise BadTopology(f"{name!r}: expected GENERATION-COUNT with generation one of {', '.join(CHIPS)}")
    _, cores_per_chip, dims = CHIPS[generation]
    chips = int(count) // cores_per_chip
    grids = GRID_3D if dims == 3 else GRID_2D
    if chips not in grids:
        raise BadTopology(f"{name!r}: no standard {generation} slice has {chips} chips ({', '.join(map(str, grids))})")
    return generation, f"{'v5e' if generation == 'v5litepod' else generation}:{grids[chips]}", chips


def topology_devices(name: str) -> tuple[str, list]:
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover - part of jax
        raise LimaError(f"jax.experimental.topologies is unavailable: {e}") from None
    generation, desc, _ = parse_topology(name)
    try:
        # v4 trains in megacore mode: one JAX device per chip (two TensorCores, 32 GiB).
        extra = {"chip_config_name": "megacore"} if generation == "v4" else {}
        topology = topologies.get_topology_desc(desc, "tpu", **extra)
    except Exception as e:  # noqa: BLE001 - libtpu reports many ways
        raise LimaError(f"cannot describe TPU topology {desc} (is libtpu installed? pip install libtpu): {str(e).splitlines()[0]}") from None
    return generation, list(topology.devices)


def compile_report(config, topology: str, total_steps: int, *, pieces: int | None = None,
                   tokenizer: str = "", rows: int | None = None) -> dict:
    """Compiles the train step for `topology` and measures it (no device memory is touched).

    The model is the one training builds (`trained_model_config`: the tokenizer's `pieces` + EOT,
    padded); `rows` is the global row count of a step (default `batch_size`, the dry run passes the
    data's packed rows). `config` is prepared (`config.prepare(config, "tpu")`) by the caller."""
    if pieces is None:
        pieces, tokenizer = tokenizer_pieces(config)
    cfg = trained_model_config(config, pieces)
    generation, devices = topology_devices(topology)
    mesh = make_mesh(config.mesh.to_dict(), devices)
    rows = config.batch_size if rows is None else rows
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % (dp * config.grad_accum):
        raise LimaError(f"config key batch_size: {rows} rows do not divide over data*fsdp={dp} x grad_accum={config.grad_accum}")
    lora = aot_lora(config, cfg)
    step, state, frozen = _train_step(config, cfg, mesh, lora, total_steps)
    start = time.perf_counter()
    lowered = step.lower(state, abstract_batch(rows, config.data.max_len, mesh), *(() if frozen is None else (frozen,)))
    summary = {
        "config": config.name,
        "topology": topology,
        "chips": len(devices),
        "mesh": dict(mesh.shape),
        "remat": cfg.remat,
        "attention": attention.resolve(cfg.attention, config.data.max_len, cfg.resolved_head_dim, cfg.dtype,
                                       where=devices[0].platform),
        "vocab_size": cfg.vocab_size,  # embedding rows: the tokenizer's pieces + EOT + padding
        "vocab_padding": cfg.vocab_padding,
        "tokenizer": tokenizer,
        "batch": [rows, config.data.max_len],
        "grad_accum": config.grad_accum,
        "params": param_count(cfg),
        "trained_params": sum(a.size for a in jax.tree.leaves(state.params)),
        "lora": None if lora is None else lora_summary(lora, cfg),
        "hbm_bytes": CHIPS[generation][0] * 2**30,
    }
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA refuses a program that cannot fit in HBM
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return {**summary, "fits": False, "compile_s": round(time.perf_counter() - start, 2), "error": _first_line(str(e))}
    compile_s = time.perf_counter() - start
    tflops = flops.train_flops_per_token(cfg, config.data.max_len, frozen=lora is not None) * rows * config.data.max_len / 1e12
    return {**summary, **_measured(compiled, compile_s, summary["hbm_bytes"], state, frozen),
            "model_tflops_per_step": round(tflops, 1), "peak_tflops_per_chip": flops.published_peak_tflops(devices[0].device_kind)}


def _train_step(config, cfg: ModelConfig, mesh: Mesh, lora: LoraSpec | None, total_steps: int) -> tuple[Any, Any, Any]:
    """(the jitted train step, the abstract state, the abstract frozen base or None), as training builds
    them (`trained_dtype`)."""
    optimizer = optim.make_optimizer(config.optim, total_steps, trained_dtype(cfg, lora))
    schedule = optim.learning_rate(config.optim, total_steps)
    frozen = None if lora is None else abstract_frozen(cfg, lora, mesh)
    step = jit_train_step(config, cfg, optimizer, schedule, mesh, lora, None if frozen is None else shardings_of(frozen))
    return step, abstract_state(cfg, optimizer, mesh, lora), frozen


def _measured(compiled: Any, compile_s: float, hbm: int, state: Any, frozen: Any) -> dict:
    """Per-chip bytes against the chip's HBM and XLA's cost analysis of a compiled step."""
    mem = compiled.memory_analysis()
    argument, temp, output, alias = (
        mem.argument_size_in_bytes,
        mem.temp_size_in_bytes,
        mem.output_size_in_bytes,
        mem.alias_size_in_bytes,
    )
    total = argument + output - alias + temp + mem.generated_code_size_in_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {
        "per_chip_bytes": {"argument": argument, "output": output, "alias": alias, "temp": temp, "total": total,
                           "trained_state": chip_bytes(state), **({} if frozen is None else {"frozen_base": chip_bytes(frozen)})},
        "hbm_fraction": round(total / hbm, 4),
        "fits": total <= hbm,
        "compile_s": round(compile_s, 2),
        "cost_analysis": {k: float(v) for k, v in (cost or {}).items() if k in ("flops", "bytes accessed", "transcendentals")},
    }


def aot_lora(config, cfg: ModelConfig) -> LoraSpec | None:
    """The run's LoraSpec from its `lora.*` keys; no base is read, so the rows trained are those of a base
    without LIMA's EOT (the tokenizer's ids + EOT), as `lima_jax.train` finds them for a pretrained base."""
    spec = lora_spec.from_keys(config)
    if spec is None:
        return None
    return dataclasses.replace(spec, rows=(tokenizer_ids(config, cfg), cfg.used_vocab_size))


def abstract_frozen(cfg: ModelConfig, lora: LoraSpec, mesh: Mesh) -> Any:
    """The frozen base's shapes, with shardings, as the run holds it (`lora.base_dtype`), nothing allocated:
    a base stored as the config's `model.param_dtype` when `lora.base_dtype` is empty."""
    params = nnx.to_pure_dict(nnx.state(abstract_model(cfg)))
    frozen = jax.eval_shape(functools.partial(lora_base.frozen, base_dtype=lora.base_dtype), params)
    where = lora_base.placement(params, lora.base_dtype, cfg, mesh)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), frozen, where)


def chip_bytes(tree: Any) -> int:
    """Bytes of one device's shards of `tree` (ShapeDtypeStructs with shardings; the largest shard)."""
    return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def lora_summary(lora: LoraSpec, cfg: ModelConfig) -> dict:
    return {"rank": lora.rank, "alpha": lora.alpha, "targets": ",".join(lora.targets), "rows": list(lora.rows),
            "base_dtype": lora.base_dtype or f"{cfg.param_dtype} (as stored: model.param_dtype assumed)"}


def compile_offline() -> None:
    """This host has no TPU: let libtpu load beside other processes (it otherwise locks
    /tmp/libtpu_lockfile for one) and skip the TPU VM metadata server. Call before JAX loads a backend.

    JAX's persistent compilation cache is off: it stores what a TPU topology compiles but a compile-only
    client cannot load it back (each later compile warns and compiles again), so entries are dead weight."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    jax.config.update("jax_enable_compilation_cache", False)


def print_report(report: dict) -> None:
    """The report as one JSON line on stdout; a step that does not fit exits 1 with one line why."""
    print(json.dumps(report))
    if misfit(report):
        print(f"error: {misfit(report)}", file=sys.stderr)
        sys.exit(1)


def misfit(report: dict) -> str | None:
    """The one-line error for a report whose step does not fit its chips, else None."""
    if report["fits"]:
        return None
    needed = report["error"] if "error" in report else f"needs {report['per_chip_bytes']['total'] / 2**30:.1f} GiB per chip"
    return f"{report['config']} does not fit {report['topology']} ({report['hbm_bytes'] / 2**30:.0f} GiB per chip): {needed}"


def _first_line(message: str) -> str:
    return next((ln.strip() for ln in message.splitlines() if "RESOURCE_EXHAUSTED" in ln), message.splitlines()[0])
