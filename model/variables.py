"""Parameter types and the filters that pick a finetuning method's trainable subset."""
from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx

# The logical axis names parameters may carry (mapped to mesh axes by the trainer's rules).
# `layers` is the leading axis of the stacked parameters of a model with scanned layers.
LOGICAL_AXES = frozenset({"embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "prompt", "layers"})


class PromptParam(nnx.Param):
    """A soft-prompt vector (prompt tuning trains only these)."""


LoRAParam = nnx.LoRAParam
LORA_PARAMS = nnx.LoRAParam
PROMPT_PARAMS = PromptParam
BASE_PARAMS = nnx.All(nnx.Param, nnx.Not(nnx.Any(nnx.LoRAParam, PromptParam)))

# The finetuning methods: full-model tuning, LoRA, prompt tuning (Zhang et al. 2024).
METHODS = ("fmt", "lora", "prompt")
_METHOD_FILTERS = dict(zip(METHODS, (BASE_PARAMS, LORA_PARAMS, PROMPT_PARAMS)))


def trainable_filter(method: str) -> Any:
    """The NNX filter of the parameters `method` trains: fmt (all base weights), lora, prompt."""
    if method not in _METHOD_FILTERS:
        raise ValueError(f"unknown finetuning method {method!r}; valid: {list(METHODS)}")
    return _METHOD_FILTERS[method]


def make_param(
    value: jax.Array, axes: Sequence[str | None], kind: type[nnx.Variable] = nnx.Param
) -> nnx.Variable:
    """Wrap `value` in a parameter carrying logical axis names (no mesh needed at creation).

    The names live in the variable's `out_sharding` metadata, so `nnx.get_partition_spec`
    under `flax.linen.logical_axis_rules(...)` (or the trainer's own rules) maps them.
    """
    axes = tuple(axes)
    if len(axes) != value.ndim:
        raise ValueError(f"axes {axes} do not match parameter shape {value.shape}")
    unknown = [a for a in axes if a is not None and a not in LOGICAL_AXES]
    if unknown:
        raise ValueError(f"unknown logical axis names {unknown}; valid: {sorted(LOGICAL_AXES)}")
    return kind(value, out_sharding=axes, eager_sharding=False)


def logical_axes(module: nnx.Module) -> nnx.State:
    """State with, for every parameter, its tuple of logical axis names (None = replicated)."""
    state = nnx.state(module, nnx.Param)
    return jax.tree.map(
        lambda v: v.get_metadata().get("out_sharding"),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def trainable_fraction(module: nnx.Module, method: str) -> dict[str, float]:
    """Parameters `method` trains, the base model's parameter count and their ratio.

    (The paper: LoRA rank 4 on 1B adds ~0.19%, a 100-token prompt ~0.017%.) Works on an
    abstract model from nnx.eval_shape too, so it costs nothing for the large sizes.
    """

    def size(filter_) -> int:
        return int(sum(v.size for v in nnx.to_flat_state(nnx.state(module, filter_)).leaves))

    trainable = size(trainable_filter(method))
    base = size(BASE_PARAMS)
    return {"trainable": trainable, "base": base, "fraction": trainable / base if base else 0.0}
