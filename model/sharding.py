"""Logical axis names -> mesh axes, for parameters (the trainer's rules) and for activations.

The mesh has axes (data, fsdp, tensor). A logical name maps to a tuple of mesh axes; a mesh
axis is used for a dimension only if it has size > 1, divides the dimension and is not taken
by another dimension of the same array (so an MQA kv head is never split over `tensor`).

Activations get sharding constraints only while a mesh is current (the trainer traces its
steps under `jax.sharding.use_abstract_mesh`): their batch dimension stays split over
data x fsdp, so per-chip activation memory follows the per-chip batch even when the
parameters are split over fsdp (without a constraint XLA may keep the batch whole and split
the weights' dimension instead). Without a mesh (one-device scoring) nothing changes.
Evaluation and decoding place their batches with `shard_rows` (padded to the data ways).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Activation dims: the batch over data x fsdp (the per-chip batch), model dims that are
# split over `tensor` in the weights stay split there; the residual stream's `embed` is not
# split (its weights are fsdp-sharded only to save memory; fsdp gathers them per layer).
ACTIVATION_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
)


def _as_tuple(axes: Any) -> tuple[str, ...]:
    if axes is None:
        return ()
    if isinstance(axes, str):
        return (axes,)
    return tuple(axes)


def spec_for(
    shape: Sequence[int],
    logical_axes: Sequence[str | None] | None,
    mesh_shape: Mapping[str, int],
    rules: Iterable[tuple[str, Any]],
) -> PartitionSpec:
    """PartitionSpec for one array: each dim gets the mesh axes its logical name maps to,
    keeping only axes of size > 1 that divide the dim and are not used by another dim."""
    if not logical_axes:
        return PartitionSpec()
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    rule_map: dict[str, tuple[str, ...]] = {}
    for name, axes in rules:
        rule_map.setdefault(name, _as_tuple(axes))
    used: set[str] = set()
    spec: list[Any] = []
    for dim, name in zip(shape, logical_axes):
        chosen: list[str] = []
        remaining = dim
        for axis in rule_map.get(name, ()) if name is not None else ():
            if axis not in mesh_shape:
                raise ValueError(f"rule for {name!r} names mesh axis {axis!r}; mesh axes are {tuple(mesh_shape)}")
            size = mesh_shape[axis]
            if axis in used or size == 1 or remaining % size:
                continue
            chosen.append(axis)
            used.add(axis)
            remaining //= size
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`x` constrained to the current mesh by ACTIVATION_RULES; unchanged when no mesh is current."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:  # one device: nothing to place (and the program stays as it was)
        return x
    spec = spec_for(x.shape, logical_axes, dict(mesh.shape), ACTIVATION_RULES)
    return jax.lax.with_sharding_constraint(x, spec)


def data_ways(mesh: jax.sharding.Mesh) -> int:
    """How many ways a batch is split on `mesh` (data x fsdp)."""
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def shard_rows(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh | None, *, fill: Mapping[str, int] = {}
               ) -> dict[str, jax.Array]:
    """A batch every process holds whole (evaluation, finetuning data) as global arrays with rows
    split over the data axes; rows are padded to a multiple of data x fsdp (zeros, or `fill[key]`)
    so any batch size runs on any mesh: padded rows have zero loss weight and their outputs are
    dropped. Without a mesh the arrays are returned as they are."""
    arrays = {k: np.asarray(v) for k, v in batch.items()}
    if mesh is None:
        return arrays
    ways = data_ways(mesh)
    sharding = jax.sharding.NamedSharding(mesh, PartitionSpec(BATCH_AXES))
    out = {}
    for key, value in arrays.items():
        missing = -len(value) % ways
        if missing:
            pad = np.full((missing,) + value.shape[1:], fill.get(key, 0), value.dtype)
            value = np.concatenate([value, pad])
        out[key] = jax.make_array_from_callback(value.shape, sharding, lambda index, value=value: value[index])
    return out


def data_parallel(model: Any, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """Replicate `model`'s state (in place) on a (data=N, fsdp=1, tensor=1) mesh over `devices`
    (default: this process's devices) and return the mesh: evaluation of a model that fits one
    device, its rows split N ways (a training job's own mesh and shardings do the rest)."""
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = jax.sharding.Mesh(np.asarray(devices, dtype=object).reshape(len(devices), 1, 1), MESH_AXES)
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, jax.sharding.NamedSharding(mesh, PartitionSpec())))
    return mesh
