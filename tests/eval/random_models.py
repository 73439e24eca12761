"""Models with seeded numpy weights, built without compiling an init (fast on CPU) for eval tests."""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from model.lora import LoRAConfig
from model.sizes import get_config
from model.transformer import Transformer


def random_model(vocab_size: int = 8192, *, lora_rank: int = 0, prompt_length: int = 0, seed: int = 0,
                 scale: float = 0.3) -> nnx.Module:
    """A tiny Transformer whose every parameter is seeded N(0, scale^2) (norm scales 1); LoRA B != 0."""
    config = get_config("tiny", vocab_size=vocab_size)
    lora = LoRAConfig(rank=lora_rank) if lora_rank else None
    abstract = nnx.eval_shape(lambda: Transformer(config, lora=lora, prompt_length=prompt_length,
                                                  rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if str(getattr(path[-1], "key", "")) == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        std = 1.0 if str(getattr(path[-1], "key", "")) in ("embedding", "prompt") else scale
        return (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    values = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(params))
    nnx.replace_by_pure_dict(params, values)
    return nnx.merge(graphdef, params, rest)
