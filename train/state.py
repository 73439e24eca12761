"""Build the sharded train state: the model is created inside jit with out_shardings, so
no parameter ever exists unsharded, and optimizer state shardings come from the compiler.

A finetuning method's trainable filter (model.variables.trainable_filter) splits the model:
the train state holds only the trainable params and their optimizer state; frozen params travel
with the rest of the module state (RNG streams), sharded like params, and get neither gradients
nor optimizer state. Pretraining is the "fmt" filter on a plain model (every parameter trains).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from model.functional import make_rngs
from model.variables import trainable_filter
from train.partitioning import param_partition_specs, to_named, variable_shardings

ModelFactory = Callable[[nnx.Rngs], nnx.Module]


@dataclasses.dataclass
class ModelParts:
    """What the steps need besides the arrays: the graph, shardings and abstract shapes."""
    graphdef: nnx.GraphDef
    param_shardings: dict
    rest_shardings: Any
    state_shardings: dict
    abstract_state: dict  # ShapeDtypeStructs with shardings, for restore
    abstract_rest: Any    # the same for the non-trainable state (frozen params, RNG streams)
    num_params: int       # trainable parameters


def _split(model: nnx.Module, method: str) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    return nnx.split(model, trainable_filter(method), ...)


def abstract_model(factory: ModelFactory, seed: int, prng_impl: str = "threefry2x32",
                   method: str = "fmt") -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable params, rest): shapes and metadata only (no allocation)."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: factory(make_rngs(seed, prng_impl)))
    return _split(model, method)


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def plan(factory: ModelFactory, optimizer: optax.GradientTransformation, mesh: Mesh, seed: int,
         prng_impl: str = "threefry2x32", method: str = "fmt") -> ModelParts:
    """Shardings for the trainable params (logical-axis rules), the rest (frozen params by the same
    rules, RNG streams replicated) and optimizer state (placed like its params), without allocating."""
    graphdef, abs_params, abs_rest = abstract_model(factory, seed, prng_impl, method)
    specs = param_partition_specs(abs_params, mesh)
    param_shardings = to_named(specs, mesh)
    rest_shardings = variable_shardings(abs_rest, mesh)
    abs_pure = _with_shardings(nnx.to_pure_dict(abs_params), param_shardings)
    abs_opt = jax.eval_shape(optimizer.init, abs_pure)
    opt_shardings = to_named(optimizer_state_specs(abs_opt, abs_pure, specs), mesh)
    abs_opt = _with_shardings(abs_opt, opt_shardings)
    num_params = sum(int(x.size) for x in jax.tree.leaves(abs_pure))
    return ModelParts(
        graphdef=graphdef, param_shardings=param_shardings, rest_shardings=rest_shardings,
        state_shardings={"params": param_shardings, "opt_state": opt_shardings},
        abstract_state={"params": abs_pure, "opt_state": abs_opt},
        abstract_rest=_with_shardings(abs_rest, rest_shardings), num_params=num_params)


def _param_lookup(abs_params: dict, specs: dict) -> dict[tuple, tuple[tuple[int, ...], PartitionSpec]]:
    flat_params = jax.tree_util.tree_flatten_with_path(abs_params)[0]
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    return {tuple(_key(k) for k in path): (tuple(leaf.shape), spec)
            for (path, leaf), spec in zip(flat_params, flat_specs)}


def _key(entry: Any) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def optimizer_state_specs(abs_opt: Any, abs_params: dict, specs: dict) -> Any:
    """Place each optimizer-state leaf like the parameter it belongs to (found by path
    suffix): same shape -> same spec; a factored row/column statistic (one dim removed)
    -> the spec without that dim; anything else (counts, scalars) -> replicated."""
    lookup = _param_lookup(abs_params, specs)
    depth = max((len(p) for p in lookup), default=0)

    def place(path, leaf):
        keys = tuple(_key(k) for k in path)
        for n in range(min(depth, len(keys)), 0, -1):
            if keys[-n:] in lookup:
                shape, spec = lookup[keys[-n:]]
                break
        else:
            return PartitionSpec()
        full = tuple(spec) + (None,) * (len(shape) - len(spec))
        if tuple(leaf.shape) == shape:
            return spec
        for drop in range(len(shape)):
            if tuple(leaf.shape) == shape[:drop] + shape[drop + 1:]:
                return PartitionSpec(*(full[:drop] + full[drop + 1:]))
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(place, abs_opt)


def init_state(factory: ModelFactory, optimizer: optax.GradientTransformation, parts: ModelParts,
               seed: int, prng_impl: str = "threefry2x32", method: str = "fmt") -> tuple[dict, nnx.State]:
    """Fresh trainable params (initialised already sharded), their optimizer state, and the rest."""

    def create():
        with nnx.use_eager_sharding(False):
            _, params, rest = _split(factory(make_rngs(seed, prng_impl)), method)
        return nnx.to_pure_dict(params), rest

    params, rest = jax.jit(create, out_shardings=(parts.param_shardings, parts.rest_shardings))()
    opt_state = jax.jit(optimizer.init, out_shardings=parts.state_shardings["opt_state"])(params)
    return {"params": params, "opt_state": opt_state}, rest


def init_rest(factory: ModelFactory, parts: ModelParts, seed: int, prng_impl: str = "threefry2x32",
              method: str = "fmt") -> nnx.State:
    """Only the non-trainable module state (RNG streams, fresh frozen params), e.g. after restoring params."""

    def create():
        with nnx.use_eager_sharding(False):
            return _split(factory(make_rngs(seed, prng_impl)), method)[2]

    return jax.jit(create, out_shardings=parts.rest_shardings)()
