"""Device mesh (data, fsdp, tensor) and logical-axis rules that place every parameter.

Parameters carry logical axis names (`embed`, `vocab`, `heads`, `kv_heads`, `head_dim`,
`mlp`, `prompt`, `layers`) in their `out_sharding` metadata; rules (gin) map each name to mesh axes.
A mesh axis is only used for a dimension it divides, so an MQA kv projection (one kv head)
is never split over `tensor`: it falls back to fsdp on its `embed` dim, or replication.
Regex rules over parameter paths override the logical rules (big_vision style).
"""
from __future__ import annotations

import logging
import re
from typing import Any, Iterable, Sequence

import gin
import jax
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from model import sharding

MESH_AXES = sharding.MESH_AXES
BATCH_AXES = sharding.BATCH_AXES

# logical name -> mesh axis / tuple of mesh axes / None (replicate)
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # only taken when num_kv_heads divides by it (never for MQA)
    ("head_dim", None),
    ("mlp", "tensor"),
    ("prompt", None),
    ("layers", None),  # the stacked layer axis of scanned models (no pipeline stages)
)

log = logging.getLogger(__name__)


@gin.configurable
def make_mesh(
    data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes);
    raises ValueError when the axis sizes do not multiply to the device count."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, size in sizes.items():
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"mesh axis {name!r} must be a positive int, got {size!r}")
    if data * fsdp * tensor != len(devices):
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {data * fsdp * tensor} devices, "
            f"but {len(devices)} devices are available ({devices[0].platform}); "
            f"choose axis sizes whose product is {len(devices)}")
    array = np.asarray(devices, dtype=object).reshape(data, fsdp, tensor)
    return Mesh(array, MESH_AXES)


@gin.configurable
def slice_topology(topology: str | None = None) -> str | None:
    """The slice a job is sized for (e.g. "v5p:4x4x4", bound in its gin file next to its mesh):
    what `python -m train.compile` compiles the job for when given no --topology."""
    return topology


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch dimension split over data and fsdp, sequence dimension replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def spec_for(
    shape: Sequence[int],
    logical_axes: Sequence[str | None] | None,
    mesh: Mesh,
    rules: Iterable[tuple[str, Any]] = DEFAULT_LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """PartitionSpec for one parameter on `mesh` (model.sharding.spec_for with the parameter rules)."""
    return sharding.spec_for(shape, logical_axes, mesh.shape, rules)


def path_string(path: Sequence[Any]) -> str:
    """'layers.0.attention.query.kernel' for an nnx state path."""
    return ".".join(str(getattr(p, "key", p)) for p in path)


def logical_axes_of(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names an nnx Variable carries (`out_sharding`, or the older names)."""
    metadata = variable.get_metadata()
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = metadata.get(key)
        if names:
            return tuple(names)
    return None


@gin.configurable
def param_partition_specs(
    abstract_params: nnx.State,
    mesh: Mesh,
    logical_axis_rules: Sequence[tuple[str, Any]] = DEFAULT_LOGICAL_AXIS_RULES,
    path_rules: Sequence[tuple[str, Sequence[Any]]] = (),
) -> dict:
    """Pure-dict tree of PartitionSpecs for an (abstract) nnx parameter State.
    `path_rules` = [(regex over 'a.b.kernel', spec tuple)] override the logical rules."""
    compiled = [(re.compile(p), tuple(s)) for p, s in path_rules]
    flat = {}
    for path, variable in nnx.to_flat_state(abstract_params):
        name = path_string(path)
        shape = tuple(variable.get_value().shape)
        spec = None
        for regex, override in compiled:
            if regex.search(name):
                spec = PartitionSpec(*override)
                break
        if spec is None:
            spec = spec_for(shape, logical_axes_of(variable), mesh, logical_axis_rules)
        flat[path] = spec
    return _unflatten(flat)


def variable_shardings(abstract_state: nnx.State, mesh: Mesh) -> nnx.State:
    """NamedShardings shaped like an nnx State: parameters (frozen ones too) placed by the same
    rules as param_partition_specs, everything else (RNG streams) replicated."""
    flat = traverse_util.flatten_dict(param_partition_specs(abstract_state, mesh))
    return nnx.map_state(lambda path, variable: variable.replace(NamedSharding(mesh, flat[path])), abstract_state)


def _unflatten(flat: dict[tuple, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def to_named(specs: Any, mesh: Mesh) -> Any:
    """Map a tree of PartitionSpecs to NamedShardings on `mesh`."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))
