"""Exported models: a directory with `params/` (a params-only orbax checkpoint that finetuning
and evaluation load), `model.safetensors` (flat "blocks.0.attention.q.kernel" names, for use
outside JAX) and `config.json` (the ModelConfig plus where the weights came from). Built in a
sibling temporary directory and renamed, so an export is whole or absent. No pickle anywhere.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from safetensors.numpy import load_file, save_file

from checkpoints.load import abstract_params, load_checkpoint_params
from model.config import ModelConfig
from model.methods import build_model

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PARAMS_DIR = "params"
SAFETENSORS_FORMAT = "ftscale"


def flat_names(params: dict) -> dict[str, np.ndarray]:
    """{"blocks.0.attention.q.kernel": array} for safetensors."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out[name] = np.ascontiguousarray(np.asarray(leaf))
    return out


def is_export(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def write_export(out: str | os.PathLike, params: dict, config: ModelConfig, provenance: dict[str, Any]) -> Path:
    """Write params (pure dict of a plain model) as an export directory at `out` (which must not exist)."""
    out = Path(out).absolute()
    if out.exists():
        raise ValueError(f"export path {out} already exists; choose a new path")
    params = jax.tree.map(np.asarray, params)
    tmp = out.with_name(f".{out.name}.tmp-export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    save_file(flat_names(params), str(tmp / SAFETENSORS_FILE),
              metadata={"format": SAFETENSORS_FORMAT, "model_config": json.dumps(config.to_dict())})
    (tmp / CONFIG_FILE).write_text(json.dumps({**config.to_dict(), "_source": provenance}, indent=2))
    os.replace(tmp, out)
    return out


def export_checkpoint(workdir: str | os.PathLike, out: str | os.PathLike, *, step: int | None = None,
                      tokens: int | None = None) -> Path:
    """Export the training checkpoint of `workdir` chosen by step or tokens seen."""
    config, params, meta = load_checkpoint_params(workdir, step=step, tokens=tokens)
    provenance = {"workdir": str(Path(workdir).absolute()), "step": meta["step"], "tokens_seen": meta["tokens_seen"],
                  "dev_loss": meta.get("dev_loss")}
    return write_export(out, params, config, provenance)


def read_config(path: str | os.PathLike) -> ModelConfig:
    values = json.loads((Path(path) / CONFIG_FILE).read_text())
    values.pop("_source", None)
    return ModelConfig.from_dict(values)


def load_exported_params(path: str | os.PathLike, fmt: str = "orbax") -> tuple[ModelConfig, dict]:
    """(ModelConfig, params pure dict) from an export; fmt "orbax" or "safetensors"."""
    path = Path(path)
    config = read_config(path)
    target = abstract_params(config)
    if fmt == "orbax":
        return config, ocp.StandardCheckpointer().restore(path.absolute() / PARAMS_DIR, target)
    if fmt == "safetensors":
        tensors = load_file(str(path / SAFETENSORS_FILE))
        names = list(flat_names(jax.tree.map(lambda v: np.zeros((), v.dtype), target)))
        missing, extra = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
        if missing or extra:
            raise ValueError(f"{path / SAFETENSORS_FILE} does not match the config: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        leaves = [jax.numpy.asarray(tensors[n]) for n in names]
        return config, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), leaves)
    raise ValueError(f"fmt must be 'orbax' or 'safetensors', got {fmt!r}")


def load_exported_model(path: str | os.PathLike, fmt: str = "orbax") -> nnx.Module:
    """A Transformer from an export directory."""
    config, params = load_exported_params(path, fmt)
    return build_model(config, params)
