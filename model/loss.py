"""The training and scoring loss: log-probabilities of target tokens and the weighted
cross-entropy with PaLM's z-loss. Every loss, dev PPL and score in the project is this one."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _log_z_and_target_logit(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return log_z, target_logit


def target_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) at every position, float32 [...]; the target logit minus logsumexp
    (half the cost of a full log_softmax on CPU)."""
    log_z, target_logit = _log_z_and_target_logit(logits, targets)
    return target_logit - log_z


def weighted_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy over weighted target tokens, plus `z_loss * log(Z)^2` (PaLM's
    softmax normaliser penalty) averaged the same way. Returns (loss, parts); parts has the
    cross-entropy, the z term and the weight sum (so callers can sum over batches)."""
    log_z, target_logit = _log_z_and_target_logit(logits, targets)
    weights = weights.astype(jnp.float32)
    weight_sum = jnp.maximum(weights.sum(), 1e-8)
    ce = ((log_z - target_logit) * weights).sum() / weight_sum
    z_term = (jnp.square(log_z) * weights).sum() / weight_sum
    loss = ce + z_loss * z_term if z_loss else ce
    return loss, {"cross_entropy": ce, "log_z_squared": z_term, "weight_sum": weights.sum()}
