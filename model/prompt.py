"""Prompt tuning's initialisation: soft-prompt vectors start as embeddings of vocabulary rows
sampled from the first PROMPT_INIT_ROWS rows (Lester et al. 2021; t5x prompt-tuning)."""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

PROMPT_INIT_ROWS = 5000  # prompt-tuning samples its init from the 5000 most frequent pieces


def sample_vocab_rows(key: jax.Array, prompt_length: int, vocab_size: int) -> jax.Array:
    """Row ids for the prompt: distinct while the prompt is no longer than the pool."""
    pool = min(PROMPT_INIT_ROWS, vocab_size)
    return jax.random.choice(key, pool, (prompt_length,), replace=prompt_length > pool)


def init_prompt_from_vocab(model: nnx.Module, *, seed: int) -> np.ndarray:
    """Set the soft prompt to embeddings of rows drawn with `seed`; returns the row ids.

    Call it after loading pretrained weights so the prompt starts in the trained embedding space.
    """
    if getattr(model, "prompt", None) is None:
        raise ValueError("model has no soft prompt: build it with Transformer(..., prompt_length=P > 0)")
    rows = np.asarray(sample_vocab_rows(jax.random.key(seed), model.prompt_length, model.config.vocab_size))
    model.prompt[...] = model.embedding[...][rows].astype(model.prompt[...].dtype)
    return rows
