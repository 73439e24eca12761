"""ftscale model: a Flax NNX decoder-only MQA/GQA transformer with LoRA, soft prompts and KV-cache decoding."""
from model.host_memory import keep_freed_memory

keep_freed_memory()  # before JAX starts its CPU client: see model/host_memory.py

from model.config import ModelConfig
from model.lora import LoRAConfig, merge_lora
from model.transformer import Transformer
from model.variables import (
    BASE_PARAMS,
    LOGICAL_AXES,
    LORA_PARAMS,
    PROMPT_PARAMS,
    PromptParam,
    logical_axes,
    trainable_filter,
    trainable_fraction,
)

__all__ = [
    "BASE_PARAMS", "LOGICAL_AXES", "LORA_PARAMS", "PROMPT_PARAMS", "LoRAConfig", "ModelConfig",
    "PromptParam", "Transformer", "logical_axes", "merge_lora", "trainable_filter", "trainable_fraction",
]
