"""Jitted train and dev-loss steps over `nnx.split` state (the NNX functional pattern).

The train state is a plain pytree {"params": pure dict of the trainable params, "opt_state":
optax state}, so it can be sharded, donated and checkpointed as is. The rest of the module
state (frozen params, RNG streams) travels separately and dropout is reseeded from
(seed, step) inside the step, which makes a resumed run bit-identical without checkpointing
RNG counters. Steps are traced under the mesh, so activations keep their batch dimension
split over data x fsdp (model.sharding.constrain).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from data.rows import BATCH_KEYS
from eval.scoring import batch_sums
from model.compute import REFERENCE, ComputeConfig
from model.functional import model_loss
from model.sharding import constrain
from train.partitioning import batch_sharding, replicated

Batch = dict[str, jax.Array]
TrainState = dict[str, Any]


def _under(mesh: Mesh | None):
    """The mesh as the current (abstract) mesh while tracing, so activation constraints apply."""
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh) if mesh is not None else contextlib.nullcontext()


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
    """[B, ...] -> [microbatches, B / microbatches, ...], microbatch m = rows m, m + M, m + 2M, ...:
    each device's contiguous rows split evenly, so every microbatch stays spread over the
    devices and no row moves between them."""

    def split(x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0] // microbatches, microbatches) + x.shape[1:]).swapaxes(0, 1)
        return constrain(x, (None, "batch") + (None,) * (x.ndim - 2))

    return jax.tree.map(split, batch)


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *,
                    learning_rate: Callable[[Any, jax.Array], jax.Array], z_loss: float, dropout: bool, seed: int,
                    prng_impl: str = "threefry2x32", compute: ComputeConfig = REFERENCE, microbatches: int = 1,
                    mesh: Mesh | None = None) -> Callable[[TrainState, nnx.State, Batch, jax.Array], tuple[TrainState, dict]]:
    """(state, rest, batch, step) -> (new state, metrics): one optimizer update of the trainable
    params (state["params"]) on the whole batch. With microbatches > 1 the gradients of the
    microbatches are summed first (each one's loss divided by the whole batch's weight sum, so
    the sum is the full batch's loss and gradient); the learning rate comes from `optimizer`'s
    schedule (`learning_rate(opt_state, step)` reports it). `compute` chooses remat, attention and loss chunking; `mesh` enables the
    activation sharding constraints."""

    def loss_fn(params, rest, batch, dropout_key, normaliser):
        return model_loss(graphdef, params, rest, batch, z_loss=z_loss, deterministic=not dropout,
                          dropout_key=dropout_key, compute=compute, normaliser=normaliser)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated(params, rest, batch, dropout_key):
        normaliser = jnp.maximum(batch["decoder_loss_weights"].astype(jnp.float32).sum(), 1e-8)

        def one(totals, xs):
            microbatch, index = xs
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
            (loss, parts), grads = grad_fn(params, rest, microbatch, key, normaliser)
            new = {"loss": loss, **parts, "grads": grads}
            return jax.tree.map(jnp.add, totals, new), None

        zero = jnp.zeros((), jnp.float32)
        totals = {"loss": zero, "cross_entropy": zero, "log_z_squared": zero, "weight_sum": zero,
                  "grads": jax.tree.map(jnp.zeros_like, params)}
        totals, _ = jax.lax.scan(one, totals, (split_microbatches(batch, microbatches), jnp.arange(microbatches)))
        grads = totals.pop("grads")
        return (totals.pop("loss"), totals), grads

    def train_step(state: TrainState, rest: nnx.State, batch: Batch, step: jax.Array):
        dropout_key = jax.random.fold_in(jax.random.key(seed, impl=prng_impl), step) if dropout else None
        with _under(mesh):
            if microbatches == 1:
                (loss, parts), grads = grad_fn(state["params"], rest, batch, dropout_key, None)
            else:
                (loss, parts), grads = accumulated(state["params"], rest, batch, dropout_key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": loss,
            "cross_entropy": parts["cross_entropy"],
            "log_z_squared": parts["log_z_squared"],
            "target_tokens": parts["weight_sum"],
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": learning_rate(state["opt_state"], step),
        }
        return {"params": params, "opt_state": opt_state}, metrics

    return train_step


def jit_train_step(step_fn: Callable, state_shardings: Any, rest_shardings: Any, mesh: Mesh) -> Callable:
    """jax.jit with explicit in/out shardings; the train state is donated."""
    batch_sh = batch_sharding(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, rest_shardings, batch_sh, replicated(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=(0,),
    )


def jit_eval_step(graphdef: nnx.GraphDef, param_shardings: Any, rest_shardings: Any, mesh: Mesh) -> Callable:
    """eval.scoring.batch_sums (the dev-loss step) jitted over the mesh: (params, rest, batch) -> sums."""

    def sums(params, rest, batch):
        with _under(mesh):
            return batch_sums(graphdef, params, rest, batch)

    return jax.jit(sums, in_shardings=(param_shardings, rest_shardings, batch_sharding(mesh)),
                   out_shardings=replicated(mesh))


def shard_batch(batch: dict, mesh: Mesh) -> Batch:
    """Global arrays from this process's rows (each host holds only its shard of the batch)."""
    sharding: NamedSharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items() if k in BATCH_KEYS}
