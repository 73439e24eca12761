"""Contrastive decoding (Xia et al. 2023, lambda = (1, -1)): text likely under a small model but not a large one.

Each step takes the positive part of p_small - p_large over ordinary subwords, renormalises it,
and picks greedily or samples from its top-p nucleus. Both models read the same prefix-LM row
([0, S2S] + prompt + EOS, bidirectional, then the generated tokens), as in eval.token_scoring,
and keep their own KV cache (model.decode): one prefill, then one cached token per step.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data.vocab import EOS_ID
from model.decode import extend, prefill


def _contrastive_token(p_small: jax.Array, p_large: jax.Array, allowed: jax.Array, top_p: jax.Array,
                       key: jax.Array) -> jax.Array:
    """The next token per row from the positive part of p_small - p_large (greedy when top_p >= 1)."""
    diff = jnp.where(allowed[None, :], jnp.maximum(p_small - p_large, 0.0), 0.0)
    fallback = jnp.where(allowed[None, :], p_small, 0.0)  # no positive mass: follow the small model
    probs = jnp.where(diff.sum(-1, keepdims=True) > 0, diff, fallback)
    probs = probs / probs.sum(-1, keepdims=True)
    rows = jnp.arange(probs.shape[0])
    order = jnp.argsort(-probs, axis=-1)
    sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
    keep_sorted = (jnp.cumsum(sorted_probs, axis=-1) - sorted_probs) < top_p  # the nucleus (always >= 1 token)
    keep = jnp.zeros_like(keep_sorted).at[rows[:, None], order].set(keep_sorted)
    logits = jnp.where(keep & (probs > 0), jnp.log(jnp.maximum(probs, 1e-30)), -jnp.inf)
    sampled = jax.random.categorical(key, logits, axis=-1)
    return jnp.where(top_p >= 1.0, jnp.argmax(probs, axis=-1), sampled).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graph_small", "graph_large", "new_tokens"))
def _decode(graph_small, graph_large, state_small, state_large, tokens, allowed, top_p, key, *, new_tokens):
    small, large = nnx.merge(graph_small, state_small), nnx.merge(graph_large, state_large)
    rows, prompt_len = tokens.shape
    lengths = jnp.full((rows,), prompt_len, jnp.int32)
    bidirectional = jnp.bool_(True)
    logits_small, cache_small = prefill(small, tokens, lengths, bidirectional, small.prompt_length + prompt_len + new_tokens)
    logits_large, cache_large = prefill(large, tokens, lengths, bidirectional, large.prompt_length + prompt_len + new_tokens)

    def body(t, carry):
        logits_small, cache_small, logits_large, cache_large, out = carry
        token = _contrastive_token(jax.nn.softmax(logits_small), jax.nn.softmax(logits_large), allowed, top_p,
                                   jax.random.fold_in(key, t))
        logits_small, cache_small = extend(small, token, small.prompt_length + lengths + t, cache_small)
        logits_large, cache_large = extend(large, token, large.prompt_length + lengths + t, cache_large)
        return logits_small, cache_small, logits_large, cache_large, out.at[:, t].set(token)

    out = jnp.zeros((rows, new_tokens), jnp.int32)
    return jax.lax.fori_loop(0, new_tokens, body, (logits_small, cache_small, logits_large, cache_large, out))[-1]


def contrastive_generate(small: nnx.Module, large: nnx.Module, prompts: np.ndarray, *, new_tokens: int,
                         mode_id: int, allowed_ids: np.ndarray, top_p: float | None = None, seed: int = 0) -> np.ndarray:
    """int32 [rows, new_tokens] continuing each prompt row; greedy when top_p is None, else nucleus sampling."""
    prompts = np.asarray(prompts, dtype=np.int32)
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise ValueError(f"prompts must be [rows, length >= 1] token ids, got shape {prompts.shape}")
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    if top_p is not None and not 0.0 < top_p < 1.0:
        raise ValueError(f"top_p must be in (0, 1) (None = greedy), got {top_p!r}")
    if small.config.vocab_size != large.config.vocab_size:
        raise ValueError(f"vocabularies differ: {small.config.vocab_size} vs {large.config.vocab_size} ids")
    allowed = np.zeros(small.config.vocab_size, bool)
    allowed[np.asarray(allowed_ids)] = True
    rows = len(prompts)
    # What the model reads for row [S2S] + prompt + EOS: the prefix shifted right, 0 first.
    tokens = np.concatenate([np.zeros((rows, 1), np.int32), np.full((rows, 1), mode_id, np.int32), prompts,
                             np.full((rows, 1), EOS_ID, np.int32)], axis=1)
    graph_small, state_small = nnx.split(small)
    graph_large, state_large = nnx.split(large)
    return np.asarray(_decode(graph_small, graph_large, state_small, state_large, jnp.asarray(tokens),
                              jnp.asarray(allowed), jnp.float32(1.0 if top_p is None else top_p), jax.random.key(seed),
                              new_tokens=new_tokens))
