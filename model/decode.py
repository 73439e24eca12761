"""Batched autoregressive decoding with a KV cache: greedy or temperature / top-k sampling.

One jitted program per (model structure, shapes, options): a prefill over the right-padded
prompts fills the cache, then a lax.while_loop emits one token per row per step until every
row has produced EOS or max_new_tokens. With MQA the cache holds one K/V head per layer.
`prefill` and `extend` are the two halves, for decoders of their own (contrastive decoding).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.sharding import shard_rows
from model.transformer import scan_blocks


def _select(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array) -> jax.Array:
    """Next token per row: argmax when temperature == 0, else a (top-k-filtered) sample.

    The options are traced values, so one compiled program serves greedy and sampling.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample(_):
        # Sorting the vocabulary costs more than the rest of a small model's step, so it runs
        # only when sampling (lax.cond executes one branch).
        vocab = logits.shape[-1]
        kth = jnp.take(jnp.sort(logits, axis=-1), jnp.clip(vocab - top_k, 0, vocab - 1), axis=-1)[:, None]
        filtered = jnp.where((top_k > 0) & (logits < kth), -jnp.inf, logits)
        return jax.random.categorical(key, filtered / temperature, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, sample, lambda _: greedy, None)


class KVCache(NamedTuple):
    """The rotated keys and the values of every position so far: per layer [B, cache_len, K, D]
    (a tuple), or one [layers, B, cache_len, K, D] array for a model with scanned layers."""
    keys: tuple[jax.Array, ...] | jax.Array
    values: tuple[jax.Array, ...] | jax.Array


def prefill(model: nnx.Module, tokens: jax.Array, lengths: jax.Array, prefix_bidirectional: jax.Array,
            cache_len: int) -> tuple[jax.Array, KVCache]:
    """Run the right-padded prompts (padding = segment 0) through the model: the logits that
    predict each row's next token, and the cache padded to `cache_len` positions (soft prompt
    included). Call inside jit."""
    batch, prompt_len = tokens.shape
    soft = model.prompt_length
    segment_ids = (jnp.arange(prompt_len)[None, :] < lengths[:, None]).astype(jnp.int32)
    causal_attention = segment_ids * prefix_bidirectional.astype(jnp.int32)
    hidden, keys, values = model.hidden_and_cache(tokens, segment_ids, None, causal_attention, True)
    logits = model.logits(hidden[jnp.arange(batch), soft + lengths - 1])
    pad = ((0, 0), (0, cache_len - soft - prompt_len), (0, 0), (0, 0))
    if model.config.scan_layers:
        pad = ((0, 0),) + pad
        return logits, KVCache(jnp.pad(keys, pad), jnp.pad(values, pad))
    return logits, KVCache(tuple(jnp.pad(k, pad) for k in keys), tuple(jnp.pad(v, pad) for v in values))


def extend(model: nnx.Module, token: jax.Array, slot: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Feed one token per row, written at cache index `slot[b]` (= its RoPE position); it attends
    to every cached position up to its own. The logits predicting the next token, and the cache."""
    cache_len = cache.keys[0].shape[-3]
    key_mask = (jnp.arange(cache_len)[None, :] <= slot[:, None])[:, None, :]
    x = model.embed(token[:, None])
    if model.config.scan_layers:
        def layer(block, carry, index):
            x, keys, values = carry
            x, k, v = block.decode(x, slot[:, None], keys[index], values[index], slot, key_mask)
            return ((x, keys.at[index].set(k), values.at[index].set(v)),)  # the carry; no stacked outputs

        x, keys, values = scan_blocks(model.blocks, layer, (x, cache.keys, cache.values),
                                      extra=(jnp.arange(model.config.num_layers),))[0]
        return model.logits(x[:, 0]), KVCache(keys, values)
    keys, values = [], []
    for layer, block in enumerate(model.blocks):
        x, k, v = block.decode(x, slot[:, None], cache.keys[layer], cache.values[layer], slot, key_mask)
        keys.append(k)
        values.append(v)
    return model.logits(x[:, 0]), KVCache(tuple(keys), tuple(values))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _generate(graphdef, state, tokens, lengths, key, eos_id, temperature, top_k, prefix_bidirectional, *, max_new_tokens):
    model = nnx.merge(graphdef, state)
    batch, prompt_len = tokens.shape
    first_slot = model.prompt_length + lengths  # where the first new token goes
    logits, cache = prefill(model, tokens, lengths, prefix_bidirectional,
                            model.prompt_length + prompt_len + max_new_tokens)

    def cond(carry):
        step, _, _, done, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, logits, cache, done, out = carry
        token = _select(logits, jax.random.fold_in(key, step), temperature, top_k)
        token = jnp.where(done, 0, token)
        out = out.at[:, step].set(token)
        done = done | (token == eos_id)
        logits, cache = extend(model, token, first_slot + step, cache)
        return step + 1, logits, cache, done, out

    out = jnp.zeros((batch, max_new_tokens), jnp.int32)
    carry = (jnp.int32(0), logits, cache, jnp.zeros((batch,), bool), out)
    return jax.lax.while_loop(cond, body, carry)[-1]


def generate(
    model: nnx.Module,
    prompt_tokens,
    prompt_lengths,
    *,
    max_new_tokens: int,
    eos_id: int = 1,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
    prefix_bidirectional: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """Continue each prompt_tokens[b, :prompt_lengths[b]]; int32 [B, max_new_tokens], 0 after EOS.

    The prompt is what the model reads (decoder_input_tokens convention: for prefix-LM data
    that is [0, inputs...]); prefix_bidirectional lets the prompt attend bidirectionally, as
    the prefix of a prefix-LM batch does. temperature 0 is greedy; otherwise sample, from the
    top_k logits when top_k > 0. With `mesh` (the model's state already placed on it) the rows
    are split over its data axes, padded to a multiple of them with one-token rows.
    """
    tokens = np.asarray(prompt_tokens)
    lengths = np.asarray(prompt_lengths)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"prompt_tokens must be an integer array [batch, length], got {tokens.dtype} {tokens.shape}")
    if lengths.shape != (tokens.shape[0],) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"prompt_lengths must be integers of shape ({tokens.shape[0]},), got {lengths.shape}")
    if (lengths < 1).any() or (lengths > tokens.shape[1]).any():
        raise ValueError(f"prompt_lengths must lie in [1, {tokens.shape[1]}], got {lengths.tolist()}")
    config = model.config
    if (tokens < 0).any() or (tokens >= config.vocab_size).any():
        raise ValueError(f"prompt_tokens must lie in [0, {config.vocab_size})")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    total = model.prompt_length + tokens.shape[1] + max_new_tokens
    if total > config.max_len:
        raise ValueError(
            f"soft prompt {model.prompt_length} + prompt length {tokens.shape[1]} + max_new_tokens {max_new_tokens} "
            f"= {total} exceeds ModelConfig.max_len={config.max_len}"
        )
    if not temperature >= 0.0:
        raise ValueError(f"temperature={temperature!r} must be >= 0 (0 = greedy)")
    if not 0 <= top_k <= config.vocab_size:
        raise ValueError(f"top_k={top_k!r} must be in [0, vocab_size={config.vocab_size}] (0 = no filter)")
    graphdef, state = nnx.split(model)
    placed = shard_rows({"tokens": tokens.astype(np.int32), "lengths": lengths.astype(np.int32)}, mesh,
                        fill={"lengths": 1})
    out = _generate(
        graphdef, state, jnp.asarray(placed["tokens"]), jnp.asarray(placed["lengths"]), jax.random.key(seed),
        jnp.int32(eos_id), jnp.float32(temperature), jnp.int32(top_k), jnp.bool_(prefix_bidirectional),
        max_new_tokens=max_new_tokens,
    )
    return np.asarray(out)[:tokens.shape[0]]
