"""Token log-likelihood of a model on prefix-LM batches: target tokens only (loss weights).

`batch_sums` is the one dev-loss step of the project (the trainer jits it with its mesh's
shardings; evaluation runs it on the params' own placement, rows split over a mesh's data axes) and `likelihood_of_batches` the one loop
over a dev or test set: per-batch sums on the device, accumulated in float64 on the host with
the next batch already dispatched. One jitted program per (model graph, batch shape), shared by
every model of the same structure, so scoring dev sets repeatedly compiles once.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from eval.metrics import TokenLikelihood
from data.rows import BATCH_KEYS
from model.functional import apply_model, split_params
from model.loss import target_log_probs, weighted_cross_entropy
from model.sharding import shard_rows

REQUIRED_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
BatchSums = Callable[[Mapping[str, np.ndarray]], Mapping[str, jax.Array]]


def batch_sums(graphdef: nnx.GraphDef, params: dict, rest: nnx.State, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Summed log-likelihood of a batch's target tokens and their summed weight (device scalars)."""
    logits = apply_model(graphdef, params, rest, batch, deterministic=True)
    _, parts = weighted_cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])
    return {"log_likelihood": -parts["cross_entropy"] * parts["weight_sum"], "weight": parts["weight_sum"]}


_batch_sums = jax.jit(batch_sums, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _target_log_probs(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
                      batch: dict[str, jax.Array]) -> jax.Array:
    """log p(target token | prefix) at every position, float32 [B, T]."""
    logits = apply_model(graphdef, params, rest, batch, deterministic=True)
    return target_log_probs(logits, batch["decoder_target_tokens"])


def likelihood_of_batches(sums: BatchSums, batches: Iterable[Mapping[str, np.ndarray]]) -> TokenLikelihood:
    """Corpus token log-likelihood of `batches` from a per-batch `sums` function (batch_sums, jitted
    however the caller places its arrays); ValueError without batches or target tokens."""
    total, weight, pending = 0.0, 0.0, None
    for batch in batches:
        result = sums(batch)  # dispatched before the previous batch's sums are pulled to the host
        if pending is not None:
            total += float(pending["log_likelihood"])
            weight += float(pending["weight"])
        pending = result
    if pending is None:
        raise ValueError("no batches to score: the split is empty")
    total += float(pending["log_likelihood"])
    weight += float(pending["weight"])
    if weight <= 0:
        raise ValueError("the batches have no target tokens (all loss weights are zero)")
    return TokenLikelihood(total, weight)


def check_batch(batch: Mapping[str, np.ndarray], vocab_size: int) -> dict[str, np.ndarray]:
    """The model's input features of a batch; ValueError for missing keys, ragged shapes or ids
    outside the model's vocabulary (batches of another language pair)."""
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; a prefix-LM batch has {list(BATCH_KEYS)}")
    out = {k: np.asarray(v) for k, v in batch.items() if k in BATCH_KEYS}
    shape = out["decoder_input_tokens"].shape
    bad = [k for k, v in out.items() if v.shape != shape]
    if len(shape) != 2 or bad:
        raise ValueError(f"batch features must all be [batch, length]; got {({k: v.shape for k, v in out.items()})}")
    for key in ("decoder_input_tokens", "decoder_target_tokens"):
        tokens = out[key]
        if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
            raise ValueError(
                f"{key} ids lie in [{tokens.min()}, {tokens.max()}] but the model's vocabulary has "
                f"{vocab_size} entries: the batches come from a different vocabulary than the model"
            )
    return out


def token_log_probs(model: nnx.Module, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-position log-probabilities of the batch's target tokens (float32 numpy [B, T]).

    Positions with loss weight 0 (inputs, padding) are computed too; weight them out.
    """
    features = check_batch(batch, model.config.vocab_size)
    graphdef, params, rest = split_params(model)
    return np.asarray(_target_log_probs(graphdef, params, rest, features))


def sequence_log_likelihoods(model: nnx.Module, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per (packed) row: (sum of target-token log-likelihoods, number of target tokens), float64.

    For per-example numbers use unpacked batches (one example per row).
    """
    log_probs = token_log_probs(model, batch).astype(np.float64)
    weights = np.asarray(batch["decoder_loss_weights"], np.float64)
    return (np.where(weights > 0, log_probs, 0.0) * weights).sum(-1), weights.sum(-1)


def score_batches(model: nnx.Module, batches: Iterable[Mapping[str, np.ndarray]], *,
                  mesh: Mesh | None = None) -> TokenLikelihood:
    """Corpus token log-likelihood over target tokens (loss weights) of all batches: PPL, log-PPL.
    With `mesh` (the model's params already placed on it, e.g. by the trainer) the rows are split
    over its data axes (padded with weightless rows to a multiple of them)."""
    graphdef, params, rest = split_params(model)
    vocab_size = model.config.vocab_size
    return likelihood_of_batches(
        lambda batch: _batch_sums(graphdef, params, rest, shard_rows(check_batch(batch, vocab_size), mesh)), batches)
