"""Finetuning adapters on their own: save / load the LoRA A, B matrices or the soft prompt
(safetensors, atomic, no pickle), put them back onto a base model, and export a finetuned
model (LoRA merged, or FMT) as an export directory (checkpoints.exports)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from checkpoints.exports import write_export
from checkpoints.load import load_checkpoint_params
from model.config import ModelConfig
from model.lora import merge_lora
from model.methods import MethodSpec, base_params_of, build_model
from model.variables import trainable_filter

ADAPTER_FILE = "adapter.safetensors"
FORMAT = "ftscale-adapter-v1"
PET_METHODS = ("lora", "prompt")


def _flat_state(model: nnx.Module, method: str) -> tuple[nnx.State, dict[str, nnx.Variable]]:
    state = nnx.state(model, trainable_filter(method))
    return state, {".".join(str(k) for k in path): var for path, var in nnx.to_flat_state(state)}


def _check_pet(method: str) -> None:
    if method not in PET_METHODS:
        raise ValueError(f"method {method!r} has no adapter (only {PET_METHODS} do); "
                         "export an FMT model whole with export_finetuned")


def save_adapter(model: nnx.Module, spec: MethodSpec, path: str | os.PathLike,
                 base: dict[str, Any] | None = None) -> Path:
    """Write only the method's parameters (LoRA A/B, or the prompt) to `path` (a .safetensors file).

    `base` records where the frozen weights come from ({"workdir", "step", "tokens_seen"}), so
    `load_adapter_model(path)` can rebuild the finetuned model from the adapter alone.
    """
    _check_pet(spec.method)
    tensors = {name: np.ascontiguousarray(np.asarray(var.get_value()))
               for name, var in _flat_state(model, spec.method)[1].items()}
    if not tensors:
        raise ValueError(f"model has no {spec.method} parameters: build it with model.methods.build_model for {spec}")
    metadata = {
        "format": FORMAT,
        "method_spec": json.dumps(spec.to_dict()),
        "model_config": json.dumps(model.config.to_dict()),
        "lora_targets": json.dumps(list(model.lora.targets) if spec.method == "lora" else []),
        "base": json.dumps(base or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_adapter(path: str | os.PathLike) -> tuple[MethodSpec, ModelConfig, dict[str, Any], dict[str, np.ndarray]]:
    """(method spec, model config, base record, tensors) of an adapter file (or a run directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    if not path.is_file():
        raise ValueError(f"adapter file {path} does not exist")
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ftscale adapter (format {metadata.get('format')!r}, expected {FORMAT!r})")
    spec = MethodSpec(**json.loads(metadata["method_spec"]))
    config = ModelConfig.from_dict(json.loads(metadata["model_config"]))
    return spec, config, json.loads(metadata.get("base") or "{}"), load_file(str(path))


def apply_adapter(model: nnx.Module, method: str, tensors: dict[str, np.ndarray]) -> nnx.Module:
    """Set `model`'s LoRA / prompt parameters from `tensors` in place (names and shapes must match)."""
    _check_pet(method)
    state, flat = _flat_state(model, method)
    missing, extra = sorted(set(flat) - set(tensors)), sorted(set(tensors) - set(flat))
    if missing or extra:
        raise ValueError(f"adapter does not fit the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, var in flat.items():
        if tuple(var.shape) != tuple(tensors[name].shape):
            raise ValueError(f"adapter tensor {name} has shape {tensors[name].shape}, the model expects {var.shape}")
        var.set_value(jax.numpy.asarray(tensors[name], dtype=var.dtype))
    nnx.update(model, state)
    return model


def load_adapter_model(path: str | os.PathLike, base_params: dict | None = None) -> nnx.Module:
    """The finetuned model: base weights (given, or read from the checkpoint the adapter records)
    with the adapter's parameters on top."""
    spec, config, base, tensors = read_adapter(path)
    if base_params is None:
        if not base.get("workdir"):
            raise ValueError(f"adapter {path} records no base checkpoint; pass base_params")
        base_config, base_params, _ = load_checkpoint_params(base["workdir"], step=base["step"])
        if base_config != config:
            raise ValueError(f"base checkpoint {base['workdir']} step {base['step']} has model {base_config}, "
                             f"the adapter was trained on {config}")
    return apply_adapter(build_model(config, base_params, spec), spec.method, tensors)


def load_adapter(model: nnx.Module, adapter: str | os.PathLike) -> nnx.Module:
    """`model` (a base Transformer) with the adapter at `adapter` (a run workdir holding
    adapter.safetensors, or the file) on top: a new LoRA / prompt model; `model` is unchanged."""
    spec, config, _, tensors = read_adapter(adapter)
    if model.config != config:
        raise ValueError(f"adapter {adapter} was trained on model {config}, not on {model.config}")
    return apply_adapter(build_model(config, base_params_of(model), spec), spec.method, tensors)


def export_finetuned(model: nnx.Module, out: str | os.PathLike, provenance: dict[str, Any] | None = None) -> Path:
    """Export a finetuned LoRA (merged into the base kernels) or FMT model as an export directory."""
    if getattr(model, "prompt", None) is not None:
        raise ValueError("a prompt-tuned model cannot be exported as a plain model (the prompt is not a "
                         "weight of it); save the prompt with save_adapter")
    merged = merge_lora(model) if model.lora is not None else model
    return write_export(out, nnx.to_pure_dict(nnx.state(merged, nnx.Param)), merged.config, provenance or {})
