"""What each finetuning method trains: build the model from pretrained params and split it
into trainable and frozen state (model.variables.trainable_filter), so frozen weights get
neither gradients nor optimizer state."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import nnx

from finetune.config import METHODS
from model.config import ModelConfig
from model.lora import LoRAConfig
from model.prompt import init_prompt_from_vocab
from model.transformer import Transformer
from model.variables import BASE_PARAMS, trainable_filter


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A method and its size: what decides the model structure (and so the compiled steps)."""

    method: str
    lora_rank: int = 0
    lora_alpha: float = 8.0
    prompt_length: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown finetuning method {self.method!r}; valid: {list(METHODS)}")
        if self.method == "lora" and self.lora_rank < 1:
            raise ValueError(f"lora_rank={self.lora_rank!r} must be >= 1 for method 'lora'")
        if self.method == "prompt" and self.prompt_length < 1:
            raise ValueError(f"prompt_length={self.prompt_length!r} must be >= 1 for method 'prompt'")

    @property
    def lora(self) -> LoRAConfig | None:
        return LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha) if self.method == "lora" else None

    @property
    def soft_prompt_length(self) -> int:
        return self.prompt_length if self.method == "prompt" else 0

    @property
    def pet_size(self) -> int:
        return {"fmt": 0, "lora": self.lora_rank, "prompt": self.prompt_length}[self.method]

    @classmethod
    def from_config(cls, config: Any) -> "MethodSpec":
        """From a FinetuneConfig (sizes of other methods are ignored)."""
        return cls(method=config.method,
                   lora_rank=config.lora_rank if config.method == "lora" else 0,
                   lora_alpha=float(config.lora_alpha) if config.method == "lora" else 8.0,
                   prompt_length=config.prompt_length if config.method == "prompt" else 0)


def make_rngs(seed: int) -> nnx.Rngs:
    return nnx.Rngs(jax.random.key(seed))


def build_model(model_config: ModelConfig, base_params: dict, spec: MethodSpec, *, seed: int = 0) -> nnx.Module:
    """The model for `spec` with the pretrained `base_params` (pure dict of a plain model).

    LoRA A is drawn from `seed` and B is zero (the model starts exactly at the base model);
    the prompt is set to embeddings of vocabulary rows sampled with `seed` (prompt tuning's init).
    """
    model = Transformer(model_config, lora=spec.lora, prompt_length=spec.soft_prompt_length, rngs=make_rngs(seed))
    # Plain single-device arrays: params restored on a training mesh carry its axis names in their
    # sharding, and jitted functions would compile once more for every mix of placements.
    device = jax.local_devices()[0]
    base_params = jax.tree.map(lambda x: jax.device_put(np.asarray(x), device), base_params)
    base_state = nnx.state(model, BASE_PARAMS)
    try:
        nnx.replace_by_pure_dict(base_state, base_params)
    except ValueError as error:
        raise ValueError(f"pretrained params do not fit model {model_config.name!r}: {error}") from error
    nnx.update(model, base_state)
    if spec.method == "prompt":
        init_prompt_from_vocab(model, seed=seed)
    state = nnx.state(model)
    nnx.update(model, jax.tree.map(lambda x: jax.device_put(x, device), state))  # all committed to one device
    return model


def split_model(model: nnx.Module, method: str) -> tuple[nnx.GraphDef, dict, nnx.State]:
    """(graphdef, trainable params as a pure dict, everything else as State: frozen params + RNG)."""
    graphdef, trainable, rest = nnx.split(model, trainable_filter(method), ...)
    return graphdef, nnx.to_pure_dict(trainable), rest


def base_params_of(model: nnx.Module) -> dict:
    """The base (non-LoRA, non-prompt) weights as a pure dict: what must stay bitwise fixed for PET."""
    return nnx.to_pure_dict(nnx.state(model, BASE_PARAMS))


def tree_size(tree: Any) -> int:
    """Number of scalars in a pytree of arrays."""
    return int(sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree)))


def tree_bytes(tree: Any) -> int:
    """Bytes of a pytree of arrays (or ShapeDtypeStructs)."""
    return int(sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "dtype")))


def method_costs(model: nnx.Module, method: str, optimizer: Any) -> dict[str, int]:
    """Trainable parameters, total base parameters and optimizer-state bytes of `method` (no compute)."""
    _, trainable, _ = split_model(model, method)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), trainable)
    opt_state = jax.eval_shape(optimizer.init, abstract)
    return {"trainable_params": tree_size(trainable), "base_params": tree_size(base_params_of(model)),
            "optimizer_state_bytes": tree_bytes(opt_state), "trainable_bytes": tree_bytes(trainable)}
