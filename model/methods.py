"""What a finetuning method makes of a model: its structure (LoRA rank, soft-prompt length) and
its trainable subset (model.variables.trainable_filter), so frozen weights get neither
gradients nor optimizer state; and the model built from pretrained params for a method."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from model.config import ModelConfig
from model.functional import make_rngs
from model.lora import LoRAConfig
from model.prompt import init_prompt_from_vocab
from model.transformer import Transformer
from model.variables import BASE_PARAMS, METHODS, trainable_filter


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
        """LoRA rank, prompt length, or 0 for FMT (the PET-size axis of a study)."""
        return {"fmt": 0, "lora": self.lora_rank, "prompt": self.prompt_length}[self.method]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FMT = MethodSpec("fmt")


def model_factory(model_config: ModelConfig, spec: MethodSpec = FMT) -> Callable[[nnx.Rngs], Transformer]:
    """rngs -> the model `spec` trains (LoRA params, a soft prompt, or neither): what the trainer
    builds, abstractly for its shardings and inside jit for its state."""
    return lambda rngs: Transformer(model_config, lora=spec.lora, prompt_length=spec.soft_prompt_length, rngs=rngs)


def build_model(model_config: ModelConfig, base_params: dict, spec: MethodSpec = FMT, *, seed: int = 0) -> nnx.Module:
    """The model for `spec` with the pretrained `base_params` (pure dict of a plain model).

    LoRA A is drawn from `seed` and B is zero (the model starts exactly at the base model);
    the prompt is set to embeddings of vocabulary rows sampled with `seed` (prompt tuning's init).
    """
    model = model_factory(model_config, spec)(make_rngs(seed))
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
    nnx.update(model, jax.tree.map(lambda x: jax.device_put(x, device), nnx.state(model)))  # all on one device
    return model


def split_trainable(model: nnx.Module, method: str) -> tuple[nnx.GraphDef, dict, nnx.State]:
    """(graphdef, trainable params as a pure dict, everything else as State: frozen params + RNG)."""
    graphdef, trainable, rest = nnx.split(model, trainable_filter(method), ...)
    return graphdef, nnx.to_pure_dict(trainable), rest


def base_params_of(model: nnx.Module) -> dict:
    """The base (non-LoRA, non-prompt) weights as a pure dict: what must stay bitwise fixed for PET."""
    return nnx.to_pure_dict(nnx.state(model, BASE_PARAMS))
