"""A small nnx module with the model contract's call signature and logical axes, so the
trainer's tests do not depend on the real model's speed."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


class TinyLM(nnx.Module):
    def __init__(self, vocab_size: int = 64, d_model: int = 16, d_ff: int = 32, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.1)
        self.embedding = nnx.Param(init(rngs.params(), (vocab_size, d_model)), out_sharding=("vocab", "embed"),
                                   eager_sharding=False)
        self.position = nnx.Param(init(rngs.params(), (256, d_model)), out_sharding=(None, "embed"),
                                  eager_sharding=False)
        self.up = nnx.Param(init(rngs.params(), (d_model, d_ff)), out_sharding=("embed", "mlp"), eager_sharding=False)
        self.down = nnx.Param(init(rngs.params(), (d_ff, d_model)), out_sharding=("mlp", "embed"),
                              eager_sharding=False)

    def __call__(self, input_tokens, *, segment_ids=None, positions=None, causal_attention=None,
                 deterministic=True, compute=None):
        if positions is None:
            positions = jnp.arange(input_tokens.shape[1])[None]
        x = self.embedding[...][input_tokens] + self.position[...][positions]
        # causal mixing: a running mean over the sequence (so batches matter across positions)
        x = x + jnp.cumsum(x, axis=1) / jnp.arange(1, x.shape[1] + 1)[None, :, None]
        x = x + jnp.tanh(x @ self.up[...]) @ self.down[...]
        return (x @ self.embedding[...].T).astype(jnp.float32)


TINY_CONFIG = {"name": "tiny-test", "vocab_size": 64, "d_model": 16, "d_ff": 32, "max_len": 256,
               "num_layers": 1, "num_heads": 1, "head_dim": 16, "dropout_rate": 0.0}


class PoisonedLM(TinyLM):
    """TinyLM whose logits turn NaN whenever the input holds `poison_token` (NaN-stop tests)."""

    poison_token = 2

    def __call__(self, input_tokens, **kwargs):
        logits = super().__call__(input_tokens, **kwargs)
        poisoned = (input_tokens == self.poison_token).any()
        return jnp.where(poisoned, jnp.nan, logits)
