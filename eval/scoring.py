"""Token log-likelihood of a model on prefix-LM batches: target tokens only (loss weights).

One jitted program per (model graph, batch shape), shared by every call and every model with
the same structure (FMT, LoRA or soft-prompt models alike), so scoring dev sets repeatedly
during finetuning or across a study compiles once. Sums are accumulated in float64 on the host.
"""
from __future__ import annotations

import functools
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eval.metrics import TokenLikelihood, TokenLikelihoodAccumulator
from model.functional import MODEL_INPUT_KEYS, apply_model

REQUIRED_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


@functools.partial(jax.jit, static_argnums=0)
def _target_log_probs(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
                      batch: dict[str, jax.Array]) -> jax.Array:
    """log p(target token | prefix) at every position, float32 [B, T] (weights applied on host)."""
    logits = apply_model(graphdef, params, rest, batch, deterministic=True).astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    targets = batch["decoder_target_tokens"].astype(jnp.int32)
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - log_z


def _check_batch(batch: Mapping[str, np.ndarray], vocab_size: int) -> dict[str, np.ndarray]:
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; a prefix-LM batch has {list(MODEL_INPUT_KEYS)}")
    out = {k: np.asarray(v) for k, v in batch.items() if k in MODEL_INPUT_KEYS}
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
    features = _check_batch(batch, model.config.vocab_size)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return np.asarray(_target_log_probs(graphdef, params, rest, features))


def sequence_log_likelihoods(model: nnx.Module, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per (packed) row: (sum of target-token log-likelihoods, number of target tokens), float64.

    For per-example numbers use unpacked batches (one example per row).
    """
    log_probs = token_log_probs(model, batch).astype(np.float64)
    weights = np.asarray(batch["decoder_loss_weights"], np.float64)
    return (np.where(weights > 0, log_probs, 0.0) * weights).sum(-1), weights.sum(-1)


def score_batches(model: nnx.Module, batches: Iterable[Mapping[str, np.ndarray]]) -> TokenLikelihood:
    """Corpus token log-likelihood over target tokens (loss weights) of all batches: PPL, log-PPL."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    accumulator = TokenLikelihoodAccumulator()
    pending = None  # dispatch the next batch before pulling the previous one back to the host
    for batch in batches:
        features = _check_batch(batch, model.config.vocab_size)
        result = _target_log_probs(graphdef, params, rest, features)
        if pending is not None:
            accumulator.add(np.asarray(pending[0], np.float64), pending[1])
        pending = (result, features["decoder_loss_weights"])
    if pending is None:
        raise ValueError("score_batches got no batches: nothing to score")
    accumulator.add(np.asarray(pending[0], np.float64), pending[1])
    return accumulator.result()
