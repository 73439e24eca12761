"""Jitted train and dev-loss steps over `nnx.split` state (the NNX functional pattern).

The train state is a plain pytree {"params": pure dict, "opt_state": optax state}, so it
can be sharded, donated and checkpointed as is. Non-parameter module state (RNG streams)
travels separately and dropout is reseeded from (seed, step) inside the step, which makes
a resumed run bit-identical without checkpointing RNG counters.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from eval.scoring import batch_sums
from data.rows import BATCH_KEYS
from model.functional import apply_model
from model.loss import weighted_cross_entropy
from train.partitioning import batch_sharding, replicated

Batch = dict[str, jax.Array]
TrainState = dict[str, Any]


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *,
                    schedule: optax.Schedule, z_loss: float, dropout: bool,
                    seed: int, prng_impl: str = "threefry2x32") -> Callable[[TrainState, nnx.State, Batch, jax.Array], tuple[TrainState, dict]]:
    """(state, rest, batch, step) -> (new state, metrics): one Adafactor update."""

    def train_step(state: TrainState, rest: nnx.State, batch: Batch, step: jax.Array):
        dropout_key = jax.random.fold_in(jax.random.key(seed, impl=prng_impl), step) if dropout else None

        def loss_fn(params):
            logits = apply_model(graphdef, params, rest, batch, deterministic=not dropout,
                                 dropout_key=dropout_key)
            return weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                          batch["decoder_loss_weights"], z_loss)

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": loss,
            "cross_entropy": parts["cross_entropy"],
            "log_z_squared": parts["log_z_squared"],
            "target_tokens": parts["weight_sum"],
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(step),
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
    return jax.jit(functools.partial(batch_sums, graphdef),
                   in_shardings=(param_shardings, rest_shardings, batch_sharding(mesh)), out_shardings=replicated(mesh))


def shard_batch(batch: dict, mesh: Mesh) -> Batch:
    """Global arrays from this process's rows (each host holds only its shard of the batch)."""
    sharding: NamedSharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items() if k in BATCH_KEYS}
