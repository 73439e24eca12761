"""Build the sharded train state: the model is created inside jit with out_shardings, so
no parameter ever exists unsharded, and optimizer state shardings come from the compiler."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from model.functional import make_rngs, split_params
from train.partitioning import param_partition_specs, replicated, to_named

ModelFactory = Callable[[nnx.Rngs], nnx.Module]


@dataclasses.dataclass
class ModelParts:
    """What the steps need besides the arrays: the graph, shardings and abstract shapes."""
    graphdef: nnx.GraphDef
    param_shardings: dict
    rest_shardings: Any
    state_shardings: dict
    abstract_state: dict  # ShapeDtypeStructs with shardings, for restore
    num_params: int


def abstract_model(factory: ModelFactory, seed: int, prng_impl: str = "threefry2x32") -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """Shapes and metadata only (no allocation)."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: factory(make_rngs(seed, prng_impl)))
    return split_params(model)


def plan(factory: ModelFactory, optimizer: optax.GradientTransformation, mesh: Mesh, seed: int,
         prng_impl: str = "threefry2x32") -> ModelParts:
    """Shardings for params (logical-axis rules), non-param state (replicated) and optimizer
    state (propagated by XLA from the params), without allocating anything."""
    graphdef, abs_params, abs_rest = abstract_model(factory, seed, prng_impl)
    specs = param_partition_specs(abs_params, mesh)
    param_shardings = to_named(specs, mesh)
    rest_shardings = jax.tree.map(lambda _: replicated(mesh), abs_rest)
    abs_pure = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                            nnx.to_pure_dict(abs_params), param_shardings)
    abs_opt = jax.eval_shape(optimizer.init, abs_pure)
    opt_shardings = to_named(optimizer_state_specs(abs_opt, abs_pure, specs), mesh)
    abs_opt = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_opt, opt_shardings)
    num_params = sum(int(x.size) for x in jax.tree.leaves(abs_pure))
    return ModelParts(
        graphdef=graphdef, param_shardings=param_shardings, rest_shardings=rest_shardings,
        state_shardings={"params": param_shardings, "opt_state": opt_shardings},
        abstract_state={"params": abs_pure, "opt_state": abs_opt}, num_params=num_params)


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
               seed: int, prng_impl: str = "threefry2x32") -> tuple[dict, nnx.State]:
    """Fresh params (initialised already sharded) and optimizer state."""

    def create():
        with nnx.use_eager_sharding(False):
            _, params, rest = split_params(factory(make_rngs(seed, prng_impl)))
        return nnx.to_pure_dict(params), rest

    params, rest = jax.jit(create, out_shardings=(parts.param_shardings, parts.rest_shardings))()
    opt_state = jax.jit(optimizer.init, out_shardings=parts.state_shardings["opt_state"])(params)
    return {"params": params, "opt_state": opt_state}, rest


def init_rest(factory: ModelFactory, parts: ModelParts, seed: int, prng_impl: str = "threefry2x32") -> nnx.State:
    """Only the non-parameter module state (RNG streams), e.g. after restoring params."""

    def create():
        with nnx.use_eager_sharding(False):
            return split_params(factory(make_rngs(seed, prng_impl)))[2]

    return jax.jit(create, out_shardings=parts.rest_shardings)()
