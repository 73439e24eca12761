"""How a forward/backward pass is computed, as opposed to what it computes (ModelConfig).

These options change memory or speed, never the math (tests/model check equal losses and
gradients), and never the parameters' layout: so they are call arguments, not part of the
model's structure, and are not recorded with checkpoints. A resumed run may change them.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import jax

from model.kernels import mqa_attention

# Rematerialisation per layer: keep every activation ("none"), keep only the layer's input
# and recompute the rest in the backward pass ("full"), or keep the outputs of weight matmuls
# and recompute the cheap elementwise work and the attention scores ("save_matmuls": dots
# without batch dims are the projections; attention's einsums have batch dims).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
# "einsum": the reference; builds float32 [B, heads, T, S] scores. "blockwise": one block of
# queries at a time, each recomputed in the backward pass, so scores exist for one block only.
# "dot_product": jax.nn.dot_product_attention (cuDNN's fused kernel on GPU, XLA elsewhere).
# "fused_cpu": model.kernels.mqa_attention, a fused C++ kernel for float32 MQA on CPU (einsum for
# other heads or dtypes). "auto": decided by for_devices: fused_cpu on one CPU device, else einsum.
ATTENTION_IMPLS = ("auto", "einsum", "blockwise", "dot_product", "fused_cpu")
# Positions whose logits the loss makes: "all" (the reference), "weighted" (only those with loss
# weight, model.loss.weighted_cross_entropy_sums: the same sums), "auto" (for_devices decides:
# weighted on one CPU device without loss_chunk, else all).
LOSS_POSITIONS = ("auto", "all", "weighted")


@dataclasses.dataclass(frozen=True)
class ComputeConfig:
    """remat: a REMAT_POLICIES name; attention: an ATTENTION_IMPLS name; attention_block: query
    rows per block (blockwise); loss_chunk: sequence positions per cross-entropy chunk, so the
    float32 [B, chunk, vocab] logits of one chunk exist at a time (0 = the whole sequence);
    loss_positions: a LOSS_POSITIONS name."""

    remat: str = "none"
    attention: str = "einsum"
    attention_block: int = 512
    loss_chunk: int = 0
    loss_positions: str = "all"

    def __post_init__(self) -> None:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; valid: {list(REMAT_POLICIES)}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention={self.attention!r}; valid: {list(ATTENTION_IMPLS)}")
        if self.loss_positions not in LOSS_POSITIONS:
            raise ValueError(f"loss_positions={self.loss_positions!r}; valid: {list(LOSS_POSITIONS)}")
        if self.loss_positions == "weighted" and self.loss_chunk:
            raise ValueError(f"loss_positions='weighted' with loss_chunk={self.loss_chunk}: both bound the "
                             f"logits; choose one (loss_chunk=0, or loss_positions='all')")
        for name in ("attention_block", "loss_chunk"):
            value = getattr(self, name)
            minimum = 1 if name == "attention_block" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")

    def for_devices(self, devices: Sequence[jax.Device]) -> "ComputeConfig":
        """This config for a step on `devices`, the "auto" options decided. On one CPU device:
        the fused attention kernel where it builds (else einsum, with a warning saying why) and
        the loss at weighted positions only. Elsewhere einsum and all positions: neither the
        kernel nor the loss's gather of weighted rows is partitioned, so on a mesh XLA would
        gather their operands (and they were measured on CPU only)."""
        platforms = {device.platform for device in devices}
        if self.attention == "fused_cpu" and platforms != {"cpu"}:
            raise ValueError(f"attention='fused_cpu' runs on CPU devices only, not {sorted(platforms)}; "
                             f"valid there: {[a for a in ATTENTION_IMPLS if a != 'fused_cpu']}")
        one_cpu = platforms == {"cpu"} and len(devices) == 1
        attention, loss_positions = self.attention, self.loss_positions
        if attention == "auto":
            attention = "einsum"
            if one_cpu:
                reason = mqa_attention.unavailable_reason()
                if reason is None:
                    attention = "fused_cpu"
                else:
                    logging.warning("attention='auto' uses einsum: the fused CPU kernel is unavailable: %s", reason)
        if loss_positions == "auto":
            loss_positions = "weighted" if one_cpu and not self.loss_chunk else "all"
        return dataclasses.replace(self, attention=attention, loss_positions=loss_positions)

    def checkpointed(self, fn, *, prevent_cse: bool = True):
        """`fn` (a pure function of arrays) under this remat policy; unchanged for "none"."""
        if self.remat == "none":
            return fn
        return jax.checkpoint(fn, policy=REMAT_POLICIES[self.remat], prevent_cse=prevent_cse)


REFERENCE = ComputeConfig()
