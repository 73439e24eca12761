"""Contrastive decoding (Xia et al. 2023, lambda = (1, -1)): text likely under a small model but not a large one.

Each step takes the positive part of p_small - p_large over ordinary subwords, renormalises it,
and picks greedily or samples from its top-p nucleus. Both models read the same prefix-LM row
([S2S] + prompt + EOS, then the generated tokens), as in eval.token_scoring; one jitted loop
per (pair of model structures, shapes).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eval.token_scoring import encode_rows


@functools.partial(jax.jit, static_argnames=("graph_small", "graph_large", "start", "new_tokens"))
def _decode(graph_small, graph_large, state_small, state_large, batch, allowed, top_p, key, *, start, new_tokens):
    from model.functional import apply_model

    small_params, small_rest = state_small
    large_params, large_rest = state_large
    rows = batch["decoder_input_tokens"].shape[0]

    def body(t, carry):
        inputs, out = carry
        features = dict(batch, decoder_input_tokens=inputs)
        pos = start + t
        p_small = jax.nn.softmax(apply_model(graph_small, small_params, small_rest, features, deterministic=True)[:, pos])
        p_large = jax.nn.softmax(apply_model(graph_large, large_params, large_rest, features, deterministic=True)[:, pos])
        diff = jnp.where(allowed[None, :], jnp.maximum(p_small - p_large, 0.0), 0.0)
        fallback = jnp.where(allowed[None, :], p_small, 0.0)  # no positive mass: follow the small model
        probs = jnp.where(diff.sum(-1, keepdims=True) > 0, diff, fallback)
        probs = probs / probs.sum(-1, keepdims=True)
        order = jnp.argsort(-probs, axis=-1)
        sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
        keep_sorted = (jnp.cumsum(sorted_probs, axis=-1) - sorted_probs) < top_p  # the nucleus (always >= 1 token)
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(rows)[:, None], order].set(keep_sorted)
        logits = jnp.where(keep & (probs > 0), jnp.log(jnp.maximum(probs, 1e-30)), -jnp.inf)
        sampled = jax.random.categorical(jax.random.fold_in(key, t), logits, axis=-1)
        token = jnp.where(top_p >= 1.0, jnp.argmax(probs, axis=-1), sampled).astype(jnp.int32)
        out = out.at[:, t].set(token)
        inputs = jnp.where(pos + 1 < inputs.shape[1], inputs.at[:, jnp.minimum(pos + 1, inputs.shape[1] - 1)].set(token), inputs)
        return inputs, out

    out = jnp.zeros((rows, new_tokens), jnp.int32)
    return jax.lax.fori_loop(0, new_tokens, body, (batch["decoder_input_tokens"], out))[1]


def _state(model: nnx.Module) -> tuple[nnx.GraphDef, Any]:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, (nnx.to_pure_dict(params), rest)


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
    batch = encode_rows(prompts, np.zeros((len(prompts), new_tokens), np.int32), seq_len=prompts.shape[1] + 2 + new_tokens,
                        mode_id=mode_id)
    start = prompts.shape[1] + 2  # row = [S2S] p_1..p_k EOS g_1..: logits at g_1's index (input EOS) predict it
    graph_small, state_small = _state(small)
    graph_large, state_large = _state(large)
    return np.asarray(_decode(graph_small, graph_large, state_small, state_large, batch, jnp.asarray(allowed),
                              jnp.float32(1.0 if top_p is None else top_p), jax.random.key(seed),
                              start=start, new_tokens=new_tokens))
