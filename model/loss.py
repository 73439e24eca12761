"""The training and scoring loss: log-probabilities of target tokens and the weighted
cross-entropy with PaLM's z-loss. Every loss, dev PPL and score in the project is this one.

`chunked_cross_entropy_sums` computes the same sums from the last hidden states one chunk of
positions at a time, each chunk's float32 logits recomputed in the backward pass, so the whole
[B, T, vocab] float32 logits tensor never exists.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

Sums = dict[str, jax.Array]


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


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> Sums:
    """Weighted sums over target tokens: cross-entropy, log(Z)^2 (the z-loss term) and weights."""
    log_z, target_logit = _log_z_and_target_logit(logits, targets)
    weights = weights.astype(jnp.float32)
    return {"cross_entropy": ((log_z - target_logit) * weights).sum(),
            "log_z_squared": (jnp.square(log_z) * weights).sum(), "weight_sum": weights.sum()}


def chunked_cross_entropy_sums(hidden: jax.Array, project: Callable[[jax.Array], jax.Array], targets: jax.Array,
                               weights: jax.Array, chunk: int) -> Sums:
    """cross_entropy_sums(project(hidden), ...) over `chunk` positions at a time: hidden [B, T, d]
    -> logits [B, chunk, vocab] per step of a scan, recomputed for the backward pass."""
    batch, length = targets.shape
    chunk = min(chunk, length)
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length  # a partial last chunk is padded with weight-0 positions

    def split(x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        return x.reshape((batch, num_chunks, chunk) + x.shape[2:]).swapaxes(0, 1)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def one_chunk(totals: Sums, xs: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[Sums, None]:
        h, t, w = xs
        sums = cross_entropy_sums(project(h), t, w)
        return {k: totals[k] + sums[k] for k in totals}, None

    zero = jnp.zeros((), jnp.float32)
    totals, _ = jax.lax.scan(one_chunk, {"cross_entropy": zero, "log_z_squared": zero, "weight_sum": zero},
                             (split(hidden), split(targets), split(weights)))
    return totals


def loss_from_sums(sums: Sums, z_loss: float = 0.0, normaliser: jax.Array | None = None
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, parts): the sums divided by the weight sum (or `normaliser`, the whole batch's weight
    sum when these are one microbatch's sums), plus `z_loss * log(Z)^2` averaged the same way."""
    if normaliser is None:
        normaliser = jnp.maximum(sums["weight_sum"], 1e-8)
    ce = sums["cross_entropy"] / normaliser
    z_term = sums["log_z_squared"] / normaliser
    loss = ce + z_loss * z_term if z_loss else ce
    return loss, {"cross_entropy": ce, "log_z_squared": z_term, "weight_sum": sums["weight_sum"]}


def weighted_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy over weighted target tokens, plus `z_loss * log(Z)^2` (PaLM's
    softmax normaliser penalty) averaged the same way. Returns (loss, parts); parts has the
    cross-entropy, the z term and the weight sum (so callers can sum over batches)."""
    return loss_from_sums(cross_entropy_sums(logits, targets, weights), z_loss)
