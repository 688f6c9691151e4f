"""LoRA adapters: their parameters, how a frozen base wears them in training, and the merged weights.

The adapter tree mirrors the model's: `{"layers": {"wq": {"a", "b"}, ...}, "rows": {"embed", "lm_head"}}`,
stacked over layers as the model's weights are. `a` holds the contracted dimensions of its weight
(wq: (L, D, r)), `b` the rest ((L, r, H, Dh)). `rows` are the rows of the tokens the run adds to the
base's vocabulary (LIMA's EOT; ids [start, start + n)), trained whole as PEFT's
`trainable_token_indices` trains them; `lm_head` only where the output matrix is not the embedding.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lima_jax.lora.spec import LoraSpec
from lima_jax.model import ModelConfig, abstract_model, logical_axes, project

RANK = "r"  # the rank's letter in the adapters' einsums (no model einsum uses it)
LAYERS = "y"  # the stacked layer axis's


def _split(spec: str) -> tuple[str, str, str, int]:
    """(input, weight, output, how many leading weight letters are contracted) of `x,w->out`."""
    inputs, out = spec.split("->")
    x, w = inputs.split(",")
    return x, w, out, sum(c in x for c in w)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoraWeight:
    """A frozen weight (an array, or a quantized one) wearing a trainable low-rank update; the model
    applies it through `model.project`."""

    base: Any
    a: jax.Array  # (*in, r), with any leading stacked axes
    b: jax.Array  # (r, *out)
    scale: float = dataclasses.field(metadata=dict(static=True))
    dropout: float = dataclasses.field(metadata=dict(static=True))

    def project(self, spec: str, x: jax.Array, key: jax.Array | None) -> jax.Array:
        y = project(spec, x, self.base)
        if key is not None and self.dropout > 0:  # PEFT's lora_dropout: on the adapter's input only
            keep = 1.0 - self.dropout
            x = jnp.where(jax.random.bernoulli(key, keep, x.shape), x / keep, jnp.zeros_like(x))
        xs, ws, out, n_in = _split(spec)
        batch = "".join(c for c in xs if c not in ws)
        h = jnp.einsum(f"{xs},{ws[:n_in]}{RANK}->{batch}{RANK}", x, self.a.astype(x.dtype))
        return y + self.scale * jnp.einsum(f"{batch}{RANK},{RANK}{ws[n_in:]}->{out}", h, self.b.astype(x.dtype))


def _weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Each layer weight's stacked shape, e.g. wq: (L, D, H, Dh)."""
    return {name: a.shape for name, a in nnx.to_pure_dict(nnx.state(abstract_model(cfg)))["layers"].items()}


def abstract(cfg: ModelConfig, spec: LoraSpec) -> dict:
    """The adapters' shapes (float32)."""
    shapes = _weight_shapes(cfg)
    tree: dict[str, Any] = {"layers": {}}
    for name, es in spec.weights.items():
        n_in = _split(es)[3]
        lead, rest = shapes[name][:1], shapes[name][1:]
        tree["layers"][name] = {
            "a": jax.ShapeDtypeStruct((*lead, *rest[:n_in], spec.rank), jnp.float32),
            "b": jax.ShapeDtypeStruct((*lead, spec.rank, *rest[n_in:]), jnp.float32),
        }
    if spec.new_rows:
        tree["rows"] = {"embed": jax.ShapeDtypeStruct((spec.new_rows, cfg.dim), jnp.float32)}
        if not cfg.tie_embeddings:
            tree["rows"]["lm_head"] = jax.ShapeDtypeStruct((cfg.dim, spec.new_rows), jnp.float32)
    return tree


def axes(cfg: ModelConfig, spec: LoraSpec) -> dict:
    """Each adapter's logical axis names: its weight's, the rank replicated."""
    weights = logical_axes(cfg)["layers"]
    tree: dict[str, Any] = {"layers": {}}
    for name, es in spec.weights.items():
        n_in = _split(es)[3]
        lead, rest = weights[name][:1], weights[name][1:]
        tree["layers"][name] = {"a": (*lead, *rest[:n_in], None), "b": (*lead, None, *rest[n_in:])}
    if spec.new_rows:
        tree["rows"] = {"embed": (None, "embed")}
        if not cfg.tie_embeddings:
            tree["rows"]["lm_head"] = ("embed", None)
    return tree


def init(cfg: ModelConfig, spec: LoraSpec, key: jax.Array, base: dict) -> dict:
    """Fresh adapters: `a` uniform in +-1/sqrt(fan in) (PEFT's Kaiming init), `b` zero, so that step 0 is
    the base model; the added tokens' rows (`spec.rows`) start as the base's (`base`: the frozen tree)."""
    shapes, (start, stop) = abstract(cfg, spec), spec.rows
    tree: dict[str, Any] = {"layers": {}}
    for i, (name, es) in enumerate(spec.weights.items()):
        a, b = shapes["layers"][name]["a"], shapes["layers"][name]["b"]
        bound = 1.0 / math.sqrt(math.prod(a.shape[1:-1]))
        tree["layers"][name] = {
            "a": jax.random.uniform(jax.random.fold_in(key, i), a.shape, jnp.float32, -bound, bound),
            "b": jnp.zeros(b.shape, jnp.float32),
        }
    if "rows" in shapes:
        tree["rows"] = {"embed": base["embed"][start:stop].astype(jnp.float32)}
        if "lm_head" in shapes["rows"]:
            tree["rows"]["lm_head"] = base["lm_head"][:, start:stop].astype(jnp.float32)
    return tree


def wear(adapters: dict, frozen: dict, spec: LoraSpec) -> dict:
    """The model's parameter tree in training: the frozen base with each targeted weight a LoraWeight and
    the added tokens' rows in place (only the adapters carry gradients)."""
    params = dict(frozen, layers=dict(frozen["layers"]))
    for name, ab in adapters["layers"].items():
        params["layers"][name] = LoraWeight(frozen["layers"][name], ab["a"], ab["b"], spec.scale, spec.dropout)
    for name, axis in (("embed", 0), ("lm_head", 1)):
        if name in adapters.get("rows", {}):
            rows = adapters["rows"][name].astype(frozen[name].dtype)
            params[name] = jax.lax.dynamic_update_slice_in_dim(frozen[name], rows, spec.rows[0], axis=axis)
    return params


def merge(adapters: dict, frozen: dict, spec: LoraSpec) -> dict:
    """Dense weights: each targeted W + scale * a b computed in float32, and the added rows in place. A
    quantized base leaf is dequantized first (the weights the adapters were trained against); every
    merged or dequantized leaf comes back float32, the others as `frozen` holds them."""
    dense = lambda w: w.dense(jnp.float32) if hasattr(w, "dense") else w  # noqa: E731
    params = dict(frozen, layers={k: dense(w) for k, w in frozen["layers"].items()})
    for name, ab in adapters["layers"].items():
        _, ws, _, n_in = _split(spec.weights[name])
        delta = jnp.einsum(f"{LAYERS}{ws[:n_in]}{RANK},{LAYERS}{RANK}{ws[n_in:]}->{LAYERS}{ws}", ab["a"], ab["b"])
        params["layers"][name] = params["layers"][name].astype(jnp.float32) + spec.scale * delta
    for name, axis in (("embed", 0), ("lm_head", 1)):
        if name in adapters.get("rows", {}):  # as `wear` applies them: in the base's dtype
            rows = adapters["rows"][name].astype(frozen[name].dtype)
            params[name] = jax.lax.dynamic_update_slice_in_dim(frozen[name], rows, spec.rows[0], axis=axis)
    return params
