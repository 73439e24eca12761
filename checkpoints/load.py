"""Load the parameters of a training checkpoint (chosen by step or by tokens seen) as a model.

Only the `params` item is read: loading needs the model config recorded in the checkpoint,
never the optimizer that wrote it.
"""
from __future__ import annotations

from pathlib import Path

import jax
from flax import nnx

from checkpoints.checksums import CorruptCheckpointError
from checkpoints.store import CheckpointStore, find_checkpoint, matching_checkpoints
from model.config import ModelConfig
from model.functional import make_rngs, split_params
from model.methods import build_model
from model.transformer import Transformer


def abstract_params(config: ModelConfig, sharding: jax.sharding.Sharding | None = None) -> dict:
    """ShapeDtypeStructs of a plain model's params (pure dict), placed on `sharding` (default:
    the first local device); nothing is allocated."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=make_rngs(0)))
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding),
                        nnx.to_pure_dict(split_params(abstract)[1]))


def read_checkpoint_meta(workdir: str | Path, *, step: int | None = None, tokens: int | None = None) -> dict:
    """The JSON record of the checkpoint with that step or token count (no arrays are read)."""
    kind, found = find_checkpoint(workdir, step=step, tokens=tokens)
    store = CheckpointStore(workdir, read_only=True)
    try:
        return store.read_meta(kind, found)
    finally:
        store.close()


def load_checkpoint_params(workdir: str | Path, *, step: int | None = None,
                           tokens: int | None = None) -> tuple[ModelConfig, dict, dict]:
    """(ModelConfig, params pure dict on one device, checkpoint meta) of a training checkpoint,
    its files checked against their checksums; when the intermediate checkpoint of that step is
    corrupt, the rolling latest of the same step (the same state) is used, else
    CorruptCheckpointError (a ValueError) names the file."""
    store = CheckpointStore(workdir, read_only=True)
    errors: list[CorruptCheckpointError] = []
    try:
        for kind, found in matching_checkpoints(workdir, step=step, tokens=tokens):
            try:
                config = ModelConfig.from_dict(store.read_meta(kind, found)["model_config"])
                params, meta = store.restore_params(kind, found, abstract_params(config))
            except CorruptCheckpointError as error:
                errors.append(error)
                continue
            return config, params, meta
    finally:
        store.close()
    raise errors[0]


def load_checkpoint_model(workdir: str | Path, *, step: int | None = None,
                          tokens: int | None = None) -> tuple[nnx.Module, dict]:
    """(Transformer, meta) for a training checkpoint: what finetuning and evaluation start from."""
    config, params, meta = load_checkpoint_params(workdir, step=step, tokens=tokens)
    return build_model(config, params), meta
