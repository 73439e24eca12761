"""Adafactor with the paper's cosine schedule (0.01 -> 0.001)."""
from __future__ import annotations

import gin
import optax


@gin.configurable
def learning_rate_schedule(
    total_steps: int,
    peak_learning_rate: float = 0.01,
    final_learning_rate: float = 0.001,
    warmup_steps: int = 0,
) -> optax.Schedule:
    """Cosine decay from `peak_learning_rate` to `final_learning_rate` over the run, after
    an optional linear warmup from 0 (Zhang et al. 2024: 0.01 -> 0.001, one epoch)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
    if peak_learning_rate <= 0 or final_learning_rate < 0:
        raise ValueError(
            f"learning rates must be positive, got peak={peak_learning_rate} final={final_learning_rate}")
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(
            peak_learning_rate, decay_steps=total_steps,
            alpha=final_learning_rate / peak_learning_rate)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_learning_rate, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=final_learning_rate)


@gin.configurable
def make_optimizer(
    schedule: optax.Schedule,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
) -> optax.GradientTransformation:
    """`optax.adafactor` as Zhang et al. 2024 train (ARCHITECTURE.md): factored second moments,
    decay 0.8, update clipping 1.0, no momentum, parameter-scale multiplication."""
    return optax.adafactor(
        learning_rate=schedule,
        min_dim_size_to_factor=min_dim_size_to_factor,
        decay_rate=decay_rate,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold,
        momentum=None,
        factored=factored,
    )
