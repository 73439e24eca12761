"""The model as a pure function of (graphdef, params, rest, batch): what jitted train, eval and
scoring steps call, so every caller builds, splits and runs the module the same way (the NNX
functional pattern)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from model.compute import REFERENCE, ComputeConfig
from model.loss import chunked_cross_entropy_sums, cross_entropy_sums, loss_from_sums

PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def make_rngs(seed: int, prng_impl: str = "threefry2x32") -> nnx.Rngs:
    """Init RNG streams from one seed. `rbg` compiles ~3x faster than threefry on CPU and, like
    threefry, gives the same values whatever the sharding (the mesh-equivalence test checks it)."""
    if prng_impl not in PRNG_IMPLS:
        raise ValueError(f"prng_impl={prng_impl!r}; valid: {PRNG_IMPLS}")
    return nnx.Rngs(jax.random.key(seed, impl=prng_impl))


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, parameters, everything else: RNG streams)."""
    return nnx.split(model, nnx.Param, ...)


def _merged(graphdef: nnx.GraphDef, params, rest: nnx.State, dropout_key: jax.Array | None) -> nnx.Module:
    model = nnx.merge(graphdef, params, rest)
    if dropout_key is not None:
        # nnx.reseed gives the i-th dropout stream fold_in(key, i): layer i of an unscanned model.
        # A scanned model has one stream with a stacked key per layer: give layer i the same key.
        def per_layer(path, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
            if shape == ():
                return key
            layers = jnp.arange(math.prod(shape))
            return jax.vmap(lambda i: jax.random.fold_in(dropout_key, i))(layers).reshape(shape)

        nnx.reseed(model, dropout=dropout_key, policy=per_layer)
    return model


def _inputs(batch: dict[str, jax.Array]) -> dict:
    return dict(segment_ids=batch.get("decoder_segment_ids"), positions=batch.get("decoder_positions"),
                causal_attention=batch.get("decoder_causal_attention"))


def apply_model(graphdef: nnx.GraphDef, params: dict, rest: nnx.State, batch: dict[str, jax.Array],
                *, deterministic: bool, dropout_key: jax.Array | None = None,
                compute: ComputeConfig = REFERENCE) -> jax.Array:
    """Rebuild the module from pure params and run it on a prefix-LM batch (data.rows' keys); the logits."""
    model = _merged(graphdef, params, rest, dropout_key)
    return model(batch["decoder_input_tokens"], **_inputs(batch), deterministic=deterministic, compute=compute)


def model_loss(graphdef: nnx.GraphDef, params: dict, rest: nnx.State, batch: dict[str, jax.Array], *,
               z_loss: float, deterministic: bool, dropout_key: jax.Array | None = None,
               compute: ComputeConfig = REFERENCE, normaliser: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, parts) of model.loss on a batch (Transformer.cross_entropy_sums: no float32 logits
    kept for the backward pass); with `compute.loss_chunk` the logits are made one chunk of
    positions at a time. `normaliser`: the weight sum to divide by (microbatches)."""
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    model = _merged(graphdef, params, rest, dropout_key)
    if not hasattr(model, "hidden_states"):  # a module with only the call contract (tests' stand-ins)
        if compute.loss_chunk:
            raise ValueError(f"loss_chunk={compute.loss_chunk} needs a model with hidden_states and logits "
                             f"(model.transformer.Transformer); {type(model).__name__} only returns logits")
        logits = model(batch["decoder_input_tokens"], **_inputs(batch), deterministic=deterministic, compute=compute)
        return loss_from_sums(cross_entropy_sums(logits, targets, weights), z_loss, normaliser)
    hidden = model.hidden_states(batch["decoder_input_tokens"], **_inputs(batch), deterministic=deterministic,
                                 compute=compute)
    if not compute.loss_chunk:
        sums = model.cross_entropy_sums(hidden, targets, weights, compute.loss_positions)
    else:
        sums = chunked_cross_entropy_sums(hidden, model.logits, targets, weights, compute.loss_chunk)
    return loss_from_sums(sums, z_loss, normaliser)
