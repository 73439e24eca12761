"""What a finetuning method costs before it runs: trainable parameters and optimizer-state bytes."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from model.methods import base_params_of, split_trainable


def tree_size(tree: Any) -> int:
    """Number of scalars in a pytree of arrays."""
    return int(sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree)))


def tree_bytes(tree: Any) -> int:
    """Bytes of a pytree of arrays (or ShapeDtypeStructs)."""
    return int(sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "dtype")))


def method_costs(model: nnx.Module, method: str, optimizer: optax.GradientTransformation) -> dict[str, int]:
    """Trainable parameters, total base parameters and optimizer-state bytes of `method` (no compute)."""
    _, trainable, _ = split_trainable(model, method)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), trainable)
    opt_state = jax.eval_shape(optimizer.init, abstract)
    return {"trainable_params": tree_size(trainable), "base_params": tree_size(base_params_of(model)),
            "optimizer_state_bytes": tree_bytes(opt_state), "trainable_bytes": tree_bytes(trainable)}
