"""LoRA: low-rank trainable updates W + (alpha / r) A B on chosen projections, and merging them."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

# Projections LoRA can wrap: attention query, fused key/value, attention output, and the
# feed-forward input (gate + up, fused) and output projections.
LORA_TARGETS = ("q", "kv", "o", "wi", "wo")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Rank, scaling numerator and the projections that get LoRA (paper: attention + feed-forward)."""

    rank: int = 4
    alpha: float = 8.0
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoRAConfig.rank={self.rank!r} must be a positive integer")
        if not float(self.alpha) > 0:
            raise ValueError(f"LoRAConfig.alpha={self.alpha!r} must be > 0")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets:
            raise ValueError(f"LoRAConfig.targets={self.targets!r}: each must be one of {LORA_TARGETS}")

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.rank


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of `model` with every LoRA update folded into its base kernel and no LoRA params.

    The result has the structure of a model built with `lora=None` (so base checkpoints and
    code that expects a plain model work) and the same outputs up to float rounding.
    """
    merged = nnx.clone(model)
    for _, module in nnx.iter_modules(merged):
        if getattr(module, "lora_a", None) is not None:  # a model.layers.Projection with LoRA
            kernel = module.kernel[...]
            # A scanned model's kernels carry a leading layer axis: merge layer by layer.
            layers = kernel.shape[:kernel.ndim - len(module.in_shape) - len(module.out_shape)]
            rank = module.lora_a.shape[-1]
            a = module.lora_a[...].astype(jnp.float32).reshape(layers + (-1, rank))
            b = module.lora_b[...].astype(jnp.float32).reshape(layers + (rank, -1))
            delta = (module.lora_scaling * jnp.matmul(a, b)).reshape(kernel.shape)
            module.kernel[...] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
            module.lora_a = nnx.data(None)
            module.lora_b = nnx.data(None)
            module.lora_scaling = None
    if hasattr(merged, "lora"):
        merged.lora = None
    return merged
