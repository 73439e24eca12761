"""The model as a pure function of (graphdef, params, rest, batch): what jitted train, eval and
scoring steps call, so every caller runs the module the same way (NNX functional pattern)."""
from __future__ import annotations

import jax
from flax import nnx

# The keys of a packed prefix-LM batch (data.pipeline's feature converter output).
MODEL_INPUT_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                    "decoder_segment_ids", "decoder_positions", "decoder_causal_attention")


def apply_model(graphdef: nnx.GraphDef, params: dict, rest: nnx.State, batch: dict[str, jax.Array],
                *, deterministic: bool, dropout_key: jax.Array | None = None) -> jax.Array:
    """Rebuild the module from pure params and run it on a batch; the model's logits."""
    model = nnx.merge(graphdef, params, rest)
    if dropout_key is not None:
        nnx.reseed(model, dropout=dropout_key)
    return model(
        batch["decoder_input_tokens"],
        segment_ids=batch.get("decoder_segment_ids"),
        positions=batch.get("decoder_positions"),
        causal_attention=batch.get("decoder_causal_attention"),
        deterministic=deterministic,
    )
