"""The model's parameters as data: abstract shapes, logical axes, shardings on a mesh, and a model
built from a dict of arrays."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lima_jax.errors import LimaError
from lima_jax.model.config import ModelConfig
from lima_jax.model.llama import Llama
from lima_jax.sharding import tree_shardings


def abstract_model(cfg: ModelConfig) -> Llama:
    """The model with shapes and dtypes only: nothing allocated (for AOT compiles and restores)."""
    return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))


def logical_axes(cfg: ModelConfig) -> dict:
    """Each parameter's logical axis names, e.g. {'embed': ('vocab', 'embed'), ...}."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(abstract_model(cfg))))
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> dict:
    """Each parameter's NamedSharding on `mesh`, by the rules table (`sharding.py`)."""
    abstract = nnx.to_pure_dict(nnx.state(abstract_model(cfg)))
    return tree_shardings(logical_axes(cfg), abstract, mesh)


def model_from_params(cfg: ModelConfig, params: dict) -> Llama:
    """A model holding `params`, a nested dict shaped like `nnx.state(model).to_pure_dict()`,
    cast to `cfg.param_dtype`. A missing, extra or misshapen tensor is named in a LimaError."""
    graphdef, state = nnx.split(abstract_model(cfg))
    expected = dict(jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0])
    given = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path in expected.keys() | given.keys():
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        if path not in given:
            raise LimaError(f"parameter {name}: missing")
        if path not in expected:
            raise LimaError(f"parameter {name}: not part of this model")
        if tuple(given[path].shape) != tuple(expected[path].shape):
            raise LimaError(f"parameter {name}: expected shape {tuple(expected[path].shape)}, found {tuple(given[path].shape)}")
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda p: jnp.asarray(p, cfg.param_dtype), params))
    return nnx.merge(graphdef, state)
