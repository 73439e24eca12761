"""Multi-query / grouped-query attention (queries grouped against shared K/V heads) and masks."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from model.compute import REFERENCE, ComputeConfig
from model.config import ModelConfig
from model.kernels import mqa_attention
from model.layers import Projection, apply_rope
from model.lora import LoRAConfig

# Large finite negative so fully-masked rows (padding queries) give a finite uniform softmax.
_MASKED = -1e30


class AttentionMask:
    """Which key each query may attend to (the t5x make_decoder_mask rule), kept as per-position
    vectors over the [soft prompt; tokens] sequence and materialised whole (`dense`) or one block
    of query rows at a time (`rows`), never as float32.

    Over the tokens: [k <= q or (ca[q] and ca[k])] and seg[q] == seg[k] and seg[k] != 0.
    A soft prompt of P positions comes first: prompt queries attend causally among the prompt
    only (so the prompt's states are the same in every packed segment), and every non-padding
    token query also attends to all prompt keys.
    """

    def __init__(self, segment_ids: jax.Array, causal_attention: jax.Array | None = None,
                 prompt_length: int = 0, *, dense: bool = True):
        segment_ids = jnp.asarray(segment_ids)
        bidirectional = None if causal_attention is None else jnp.asarray(causal_attention).astype(bool)
        # Prompt positions carry segment 0 and no bidirectional flag; `rows` treats them apart.
        pad = ((0, 0), (prompt_length, 0))
        self.segment_ids = jnp.pad(segment_ids, pad) if prompt_length else segment_ids
        if bidirectional is not None and prompt_length:
            bidirectional = jnp.pad(bidirectional, pad)
        self.bidirectional = bidirectional
        self.prompt_length = prompt_length
        self.length = self.segment_ids.shape[1]
        self.dense = self.rows(0, self.length) if dense else None

    def rows(self, start: jax.Array | int, count: int) -> jax.Array:
        """Boolean [B, count, S] for queries start .. start + count - 1 (rows past the end are
        all False: padding queries of a last, partial block)."""
        if isinstance(start, int) and start + count <= self.length:  # static rows: plain slices
            q = jnp.arange(start, start + count)
            seg_q = self.segment_ids[:, start:start + count]
            bidi_q = None if self.bidirectional is None else self.bidirectional[:, start:start + count]
        else:
            q = start + jnp.arange(count)
            seg_q = jnp.take(self.segment_ids, q, axis=1, mode="fill", fill_value=0)
            bidi_q = None if self.bidirectional is None else jnp.take(
                self.bidirectional, q, axis=1, mode="fill", fill_value=False)
        k = jnp.arange(self.length)
        causal = k[None, :] <= q[:, None]  # [count, S]
        allowed = jnp.broadcast_to(causal, (seg_q.shape[0],) + causal.shape)
        if bidi_q is not None:
            allowed = allowed | (bidi_q[:, :, None] & self.bidirectional[:, None, :])
        seg_k = self.segment_ids[:, None, :]
        allowed = allowed & (seg_q[:, :, None] == seg_k) & (seg_k != 0)
        if self.prompt_length == 0:
            return allowed
        q_prompt = (q < self.prompt_length)[None, :, None]
        k_prompt = (k < self.prompt_length)[None, None, :]
        to_prompt = jnp.where(q_prompt, causal[None], (seg_q != 0)[:, :, None])
        return jnp.where(k_prompt, to_prompt, allowed & ~q_prompt)


def make_attention_mask(
    segment_ids: jax.Array, causal_attention: jax.Array | None = None, prompt_length: int = 0
) -> jax.Array:
    """Boolean mask [B, P+T, P+T]: may query q attend to key k (AttentionMask's rule)."""
    return AttentionMask(segment_ids, causal_attention, prompt_length).dense


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention with q [B,T,H,D], k/v [B,S,K,D] (K divides H), mask [B,T,S] -> [B,T,H,D].

    Query heads are reshaped into K groups of H/K and contracted against their shared K/V head
    with einsum; K/V are never repeated. Scores and softmax are float32.
    """
    batch, q_len, num_heads, head_dim = q.shape
    num_kv = k.shape[2]
    if num_kv == 1:
        return _single_kv_attention(q, k[:, :, 0], v[:, :, 0], mask)
    grouped = q.reshape(batch, q_len, num_kv, num_heads // num_kv, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", grouped, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, q_len, num_heads, head_dim)


def _single_kv_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """grouped_attention for one K/V head (MQA), k/v [B,S,D]: queries and heads are the free
    dimensions of one batched matmul per product, so neither product nor its gradient transposes
    q or the output (a fifth less time for attention's forward and backward passes on CPU).
    No reshape merges queries with heads, so heads sharded over a mesh axis stay sharded."""
    scores = jax.lax.dot_general(q, k, (((3,), (2,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, :, None, :], scores, _MASKED)  # [B, T, H, S]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jax.lax.dot_general(probs, v, (((3,), (1,)), ((0,), (0,))))  # [B, T, H, D]


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, block: int) -> jax.Array:
    """grouped_attention one block of `block` query rows at a time, each block's scores and mask
    recomputed in the backward pass: float32 scores exist for [B, heads, block, S] only."""
    batch, q_len, num_heads, head_dim = q.shape
    block = min(block, q_len)
    num_blocks = -(-q_len // block)
    padded = jnp.pad(q, ((0, 0), (0, num_blocks * block - q_len), (0, 0), (0, 0)))
    blocks = padded.reshape(batch, num_blocks, block, num_heads, head_dim).swapaxes(0, 1)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def one_block(args):
        q_block, start = args
        return grouped_attention(q_block, k, v, mask.rows(start, block))

    out = jax.lax.map(one_block, (blocks, jnp.arange(num_blocks) * block))
    return out.swapaxes(0, 1).reshape(batch, num_blocks * block, num_heads, head_dim)[:, :q_len]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask | jax.Array,
           compute: ComputeConfig) -> jax.Array:
    """Attention of q [B,T,H,D] (already scaled) over k/v [B,S,K,D] by `compute.attention`;
    `mask` is an AttentionMask or a dense boolean [B,T,S] (not for blockwise attention)."""
    if compute.attention == "blockwise":
        if not isinstance(mask, AttentionMask):
            raise ValueError("attention='blockwise' needs an AttentionMask, not a dense mask array")
        return blockwise_attention(q, k, v, mask, compute.attention_block)
    dense = mask.dense if isinstance(mask, AttentionMask) else mask
    if dense is None:
        raise ValueError(f"attention={compute.attention!r} needs AttentionMask(..., dense=True)")
    if compute.attention == "dot_product":
        return jax.nn.dot_product_attention(q, k, v, mask=dense[:, None], scale=1.0)
    if compute.attention == "auto":
        raise ValueError("attention='auto' is decided for the devices first: ComputeConfig.for_devices")
    if compute.attention == "fused_cpu" and mqa_attention.supports(q, k, v, dense):
        return mqa_attention.mqa_attention(q, k[:, :, 0], v[:, :, 0], dense)
    return grouped_attention(q, k, v, dense)


class Attention(nnx.Module):
    """Self-attention with RoPE, num_kv_heads shared K/V heads and optional LoRA on q, kv, o."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, lora: LoRAConfig | None = None):
        def lora_for(name: str) -> LoRAConfig | None:
            return lora if lora is not None and name in lora.targets else None

        common = dict(dtype=config.activation_dtype, param_dtype=config.parameter_dtype, rngs=rngs)
        d, h, kvh, hd = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
        self.q = Projection((d,), (h, hd), ("embed",), ("heads", "head_dim"), lora=lora_for("q"), **common)
        self.kv = Projection((d,), (2, kvh, hd), ("embed",), (None, "kv_heads", "head_dim"), lora=lora_for("kv"), **common)
        self.o = Projection((h, hd), (d,), ("heads", "head_dim"), ("embed",), lora=lora_for("o"), **common)
        self.rope_max_wavelength = config.rope_max_wavelength
        self.query_scale = 1.0 / math.sqrt(hd)

    def project_qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Rotated, scaled queries [B,T,H,D] and rotated keys / values [B,T,K,D]."""
        q = apply_rope(self.q(x), positions, self.rope_max_wavelength) * jnp.asarray(self.query_scale, x.dtype)
        kv = self.kv(x)
        k = apply_rope(kv[:, :, 0], positions, self.rope_max_wavelength)
        return q, k, kv[:, :, 1]

    def __call__(self, x: jax.Array, positions: jax.Array, mask: AttentionMask | jax.Array,
                 compute: ComputeConfig = REFERENCE) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Full-sequence attention; also returns this layer's keys and values (for a KV cache)."""
        q, k, v = self.project_qkv(x, positions)
        return self.o(attend(q, k, v, mask, compute)), k, v

    def decode(
        self, x: jax.Array, positions: jax.Array, cache_k: jax.Array, cache_v: jax.Array,
        slot: jax.Array, key_mask: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One new token per row: x [B,1,d] written at cache index slot[b]; attends to key_mask [B,1,S]."""
        q, k, v = self.project_qkv(x, positions)
        rows = jnp.arange(x.shape[0])
        cache_k = cache_k.at[rows, slot].set(k[:, 0].astype(cache_k.dtype))
        cache_v = cache_v.at[rows, slot].set(v[:, 0].astype(cache_v.dtype))
        return self.o(grouped_attention(q, cache_k, cache_v, key_mask)), cache_k, cache_v
