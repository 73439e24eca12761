"""The training and scoring loss: log-probabilities of target tokens and the weighted
cross-entropy with PaLM's z-loss. Every loss, dev PPL and score in the project is this one.

`projected_cross_entropy_sums` computes the same sums from the last (normed) hidden states and
the output table, with a hand-written backward pass (~25% faster on CPU than autodiff of
logits -> sums: see the function); `weighted_cross_entropy_sums` does so only at the positions
that carry loss weight (what the train step uses on one CPU device). `chunked_cross_entropy_sums`
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


def _block_rows(positions: int, block: int) -> int:
    return min(block, -(-positions // 8) * 8)  # a small batch is one block, not a padded 512


def _compact_weighted(hidden, targets, weights, scale, block):
    """Rows of scale * hidden, targets and weights with the weighted positions first (padded to
    whole blocks), the order that put them there, and how many blocks hold weighted rows."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t, w = targets.reshape(-1).astype(jnp.int32), weights.reshape(-1).astype(jnp.float32)
    num_blocks = -(-h.shape[0] // block)
    pad = num_blocks * block - h.shape[0]
    order = jnp.argsort(w == 0, stable=True)
    rows = jnp.pad(jnp.take(h * jnp.asarray(scale, h.dtype), order, axis=0), ((0, pad), (0, 0)))
    used_blocks = (jnp.count_nonzero(w) + block - 1) // block
    return rows, jnp.pad(t[order], (0, pad)), jnp.pad(w[order], (0, pad)), order, used_blocks


def _block_logits(rows, table, i, block):
    r = jax.lax.dynamic_slice_in_dim(rows, i * block, block)
    return r, jnp.dot(r, table.astype(r.dtype).T, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def weighted_cross_entropy_sums(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array,
                                scale: float, block: int = 512) -> Sums:
    """projected_cross_entropy_sums with logits made only where the loss weight is not zero.

    Positions of weight zero (prefix-LM inputs, padding: two thirds of the demo's UL2 and MT
    batches) add nothing to the sums or their gradients, yet cost a third of a CPU train step
    in the three vocabulary matmuls. Here the weighted positions are moved to the front and a
    loop makes the logits of `block` of them at a time, as many blocks as hold weighted rows,
    in the forward and again in the backward pass (the log-sum-exp is the only residual per
    position, so no [tokens, vocab] tensor exists either). The same sums and gradients; the
    rows are gathered across the whole batch, so on a mesh that splits the batch XLA would
    gather them: model.compute picks this on one device.
    """
    return _weighted_fwd(hidden, table, targets, weights, scale, block)[0]


def _weighted_fwd(hidden, table, targets, weights, scale, block):
    block = _block_rows(targets.size, block)
    rows, t, w, order, used_blocks = _compact_weighted(hidden, targets, weights, scale, block)

    def one_block(i, carry):
        log_z_rows, ce, z_squared = carry
        _, logits = _block_logits(rows, table, i, block)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        t_b, w_b = (jax.lax.dynamic_slice_in_dim(x, i * block, block) for x in (t, w))
        target_logit = jnp.take_along_axis(logits, t_b[:, None], axis=-1)[:, 0]
        return (jax.lax.dynamic_update_slice_in_dim(log_z_rows, log_z, i * block, 0),
                ce + jnp.sum((log_z - target_logit) * w_b), z_squared + jnp.sum(jnp.square(log_z) * w_b))

    zero = jnp.zeros((), jnp.float32)
    log_z, ce, z_squared = jax.lax.fori_loop(0, used_blocks, one_block,
                                             (jnp.zeros(rows.shape[0], jnp.float32), zero, zero))
    sums = {"cross_entropy": ce, "log_z_squared": z_squared, "weight_sum": w.sum()}
    like = jnp.zeros(hidden.shape[:-1] + (0,), hidden.dtype)  # hidden's shape and dtype, no data
    return sums, (rows, table, t, w, order, used_blocks, log_z, like)


def _weighted_bwd(scale, block, residuals, cotangents):
    rows, table, t, w, order, used_blocks, log_z, like = residuals
    block = _block_rows(order.shape[0], block)
    g_ce, g_z = cotangents["cross_entropy"], cotangents["log_z_squared"]
    row = w * (g_ce + 2.0 * g_z * log_z)  # as in _projected_bwd
    target_row = w * g_ce
    table_c = table.astype(rows.dtype)

    def one_block(i, carry):
        d_rows, d_table_t = carry
        r, logits = _block_logits(rows, table, i, block)
        log_z_b, row_b = (jax.lax.dynamic_slice_in_dim(x, i * block, block) for x in (log_z, row))
        d_logits = (jnp.exp(logits - log_z_b[:, None]) * row_b[:, None]).astype(rows.dtype)
        d_r = jnp.dot(d_logits, table_c, preferred_element_type=jnp.float32)
        # [d, block] @ [block, vocab]: the small operand transposed (see _projected_bwd).
        d_table_t += jnp.dot(jax.lax.optimization_barrier(r.T), d_logits, preferred_element_type=jnp.float32)
        return jax.lax.dynamic_update_slice_in_dim(d_rows, d_r, i * block, 0), d_table_t

    d_rows, d_table_t = jax.lax.fori_loop(
        0, used_blocks, one_block,
        (jnp.zeros(rows.shape, jnp.float32), jnp.zeros((rows.shape[1], table.shape[0]), jnp.float32)))
    d_rows = d_rows - target_row[:, None] * jnp.take(table_c, t, axis=0).astype(jnp.float32)
    d_table = d_table_t.T.at[t].add(-(target_row[:, None] * rows.astype(jnp.float32)))
    d_hidden = jnp.take(d_rows[:order.shape[0]], jnp.argsort(order), axis=0) * scale
    return (d_hidden.reshape(like.shape[:-1] + (rows.shape[1],)).astype(like.dtype), d_table.astype(table.dtype),
            None, None)


weighted_cross_entropy_sums.defvjp(_weighted_fwd, _weighted_bwd)


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
