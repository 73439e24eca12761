"""Adafactor with the paper's cosine schedule (0.01 -> 0.001): fixed in the program
(pretraining), or with its peak, final rate and length in the optimizer state (finetuning runs
share one compiled step)."""
from __future__ import annotations

from typing import Any

import gin
import jax
import jax.numpy as jnp
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


def cosine_learning_rate(count: jax.Array, peak_learning_rate: jax.Array, final_learning_rate: jax.Array,
                         decay_steps: jax.Array) -> jax.Array:
    """optax.cosine_decay_schedule (no warmup) written for traced arguments: the rate at update
    `count` (0-based) decaying from the peak to the final rate over `decay_steps`."""
    progress = jnp.minimum(count, decay_steps) / jnp.maximum(decay_steps, 1)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    alpha = final_learning_rate / peak_learning_rate
    return peak_learning_rate * ((1.0 - alpha) * cosine + alpha)


def _adafactor_with_cosine(peak_learning_rate, final_learning_rate, decay_steps, multiply_by_parameter_scale):
    return make_optimizer(
        lambda count: cosine_learning_rate(count, peak_learning_rate, final_learning_rate, decay_steps),
        multiply_by_parameter_scale=multiply_by_parameter_scale)


def schedule_in_state_optimizer(*, multiply_by_parameter_scale: bool = True) -> optax.GradientTransformation:
    """make_optimizer (Adafactor, gin settings) with the cosine schedule's peak, final rate and
    length held in the optimizer state (optax.inject_hyperparams) instead of the program: runs that
    differ only in those (a study's many finetuning runs) share one compiled step. Set them with
    `with_schedule` after `init`."""
    return optax.inject_hyperparams(_adafactor_with_cosine, static_args=("multiply_by_parameter_scale",))(
        peak_learning_rate=1.0, final_learning_rate=1.0, decay_steps=1,
        multiply_by_parameter_scale=bool(multiply_by_parameter_scale))


def with_schedule(opt_state: Any, *, peak_learning_rate: float, final_learning_rate: float, decay_steps: int) -> Any:
    """`opt_state` of schedule_in_state_optimizer with its schedule set (arrays placed like the old ones)."""
    if not (peak_learning_rate > 0 and final_learning_rate > 0) or decay_steps < 1:
        raise ValueError(f"a cosine schedule needs positive rates and decay_steps >= 1, got peak={peak_learning_rate} "
                         f"final={final_learning_rate} decay_steps={decay_steps}")
    values = {"peak_learning_rate": peak_learning_rate, "final_learning_rate": final_learning_rate,
              "decay_steps": decay_steps}
    hyperparams = {name: jax.device_put(jnp.asarray(values[name], old.dtype), old.sharding)
                   for name, old in opt_state.hyperparams.items()}
    return opt_state._replace(hyperparams=hyperparams)


def learning_rate_in_state(opt_state: Any, step: jax.Array) -> jax.Array:
    """The rate schedule_in_state_optimizer applies at 0-based update `step` (for metrics)."""
    hp = opt_state.hyperparams
    return cosine_learning_rate(step, hp["peak_learning_rate"], hp["final_learning_rate"], hp["decay_steps"])
