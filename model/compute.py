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


@dataclasses.dataclass(frozen=True)
class ComputeConfig:
    """remat: a REMAT_POLICIES name; attention: an ATTENTION_IMPLS name; attention_block: query
    rows per block (blockwise); loss_chunk: sequence positions per cross-entropy chunk, so the
    float32 [B, chunk, vocab] logits of one chunk exist at a time (0 = the whole sequence)."""

    remat: str = "none"
    attention: str = "einsum"
    attention_block: int = 512
    loss_chunk: int = 0

    def __post_init__(self) -> None:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; valid: {list(REMAT_POLICIES)}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention={self.attention!r}; valid: {list(ATTENTION_IMPLS)}")
        for name in ("attention_block", "loss_chunk"):
            value = getattr(self, name)
            minimum = 1 if name == "attention_block" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")

    def for_devices(self, devices: Sequence[jax.Device]) -> "ComputeConfig":
        """This config for a step on `devices`, "auto" attention decided: the fused CPU kernel on
        one CPU device where it builds (else einsum, with a warning saying why not); einsum on
        more devices (the kernel is not partitioned: XLA would gather its operands) or others."""
        platforms = {device.platform for device in devices}
        if self.attention == "fused_cpu" and platforms != {"cpu"}:
            raise ValueError(f"attention='fused_cpu' runs on CPU devices only, not {sorted(platforms)}; "
                             f"valid there: {[a for a in ATTENTION_IMPLS if a != 'fused_cpu']}")
        if self.attention != "auto":
            return self
        attention = "einsum"
        if platforms == {"cpu"} and len(devices) == 1:
            from model.kernels import mqa_attention

            reason = mqa_attention.unavailable_reason()
            if reason is None:
                attention = "fused_cpu"
            else:
                logging.warning("attention='auto' uses einsum: the fused CPU kernel is unavailable: %s", reason)
        return dataclasses.replace(self, attention=attention)

    def checkpointed(self, fn, *, prevent_cse: bool = True):
        """`fn` (a pure function of arrays) under this remat policy; unchanged for "none"."""
        if self.remat == "none":
            return fn
        return jax.checkpoint(fn, policy=REMAT_POLICIES[self.remat], prevent_cse=prevent_cse)


REFERENCE = ComputeConfig()
