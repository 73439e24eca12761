"""The training and scoring loss: log-probabilities of target tokens and the weighted
cross-entropy with PaLM's z-loss. Every loss, dev PPL and score in the project is this one.

`projected_cross_entropy_sums` computes the same sums from the last (normed) hidden states and
the output table, with a hand-written backward pass (what the train step uses on CPU, where it
is ~25% faster than autodiff of logits -> sums: see the function). `chunked_cross_entropy_sums`
computes them one chunk of positions at a time, each chunk's float32 logits recomputed in the
backward pass, so the whole [B, T, vocab] float32 logits tensor never exists.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from model.sharding import constrain

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


def _logits_axes(ndim: int) -> tuple[str | None, ...]:
    return ("batch",) + (None,) * (ndim - 2) + ("vocab",)


def _projected_sums(hidden, table, targets, weights, scale):
    # Scaling the [tokens, d] hidden states rather than the [tokens, vocab] logits: one pass
    # over the logits less (XLA:CPU wrote the scaled logits out for the max and the sum).
    scaled = hidden * jnp.asarray(scale, hidden.dtype)
    logits = jnp.einsum("...d,vd->...v", scaled, table.astype(hidden.dtype), preferred_element_type=jnp.float32)
    logits = constrain(logits, _logits_axes(logits.ndim))
    return cross_entropy_sums(logits, targets, weights), scaled, logits


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def projected_cross_entropy_sums(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array,
                                 scale: float) -> Sums:
    """cross_entropy_sums(scale * hidden @ table.T, targets, weights) for hidden [..., d] and the
    output table [vocab, d] (the tied embedding; an untied kernel passes its transpose).

    Same values and gradients as autodiff of that expression; the backward pass is written out
    because XLA:CPU makes a poor program of autodiff's: it keeps the scaled logits, scatters the
    target one-hots into a full [tokens, vocab] tensor and transposes the [tokens, vocab] logit
    gradient for the table's gradient. Here the logits are the only [tokens, vocab] residual,
    one fused pass turns them into the softmax part of the gradient, the target part is a
    gather / scatter of [tokens, d] rows, and the table's gradient transposes the small
    [tokens, d] hidden states instead of the logit gradient.
    """
    return _projected_sums(hidden, table, targets, weights, scale)[0]


def _projected_fwd(hidden, table, targets, weights, scale):
    sums, scaled, logits = _projected_sums(hidden, table, targets, weights, scale)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # CSE'd with the one in `sums`
    return sums, (scaled, table, targets, weights, logits, log_z)


def _projected_bwd(scale, residuals, cotangents):
    scaled, table, targets, weights, logits, log_z = residuals
    g_ce, g_z = cotangents["cross_entropy"], cotangents["log_z_squared"]
    weights = weights.astype(jnp.float32)
    # d(sums)/d(logits) = w * [g_ce * (softmax - onehot(target)) + g_z * 2 log_z * softmax]: a
    # per-row factor on the softmax minus the target's one-hot.
    row = weights * (g_ce + 2.0 * g_z * log_z)
    target_row = weights * g_ce
    dtype = scaled.dtype
    d_logits = (jnp.exp(logits - log_z[..., None]) * row[..., None]).astype(dtype)
    d_logits = constrain(d_logits, _logits_axes(d_logits.ndim))
    table_c = table.astype(dtype)
    target_rows = jnp.take(table_c, targets.astype(jnp.int32), axis=0)  # [..., d]
    d_scaled = jnp.einsum("...v,vd->...d", d_logits, table_c, preferred_element_type=jnp.float32)
    d_scaled = d_scaled - (target_row[..., None] * target_rows.astype(jnp.float32))
    flat_scaled = scaled.reshape(-1, scaled.shape[-1])
    # [d, tokens] @ [tokens, vocab]: transpose the small operand (the barrier keeps XLA from
    # folding the transpose back into a dot that transposes the [tokens, vocab] one).
    scaled_t = jax.lax.optimization_barrier(flat_scaled.T)
    d_table = jnp.dot(scaled_t, d_logits.reshape(-1, d_logits.shape[-1]), preferred_element_type=jnp.float32).T
    d_table = d_table.at[targets.reshape(-1).astype(jnp.int32)].add(
        -(target_row.reshape(-1, 1) * flat_scaled.astype(jnp.float32)))
    return (d_scaled * scale).astype(scaled.dtype), d_table.astype(table.dtype), None, None


projected_cross_entropy_sums.defvjp(_projected_fwd, _projected_bwd)


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
