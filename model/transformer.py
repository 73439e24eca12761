"""The decoder-only transformer: pre-norm blocks of MQA/GQA attention + gated-GELU MLP (PaLM-style)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from model.attention import Attention, AttentionMask
from model.compute import REFERENCE, ComputeConfig
from model.config import ModelConfig
from model.layers import GatedGeluMLP, RMSNorm, truncated_normal
from model.lora import LoRAConfig
from model.loss import projected_cross_entropy_sums, weighted_cross_entropy_sums
from model.prompt import sample_vocab_rows
from model.sharding import constrain
from model.variables import PromptParam, make_param

RESIDUAL_AXES = ("batch", None, None)  # the residual stream [B, T, d_model]


def _logits_axes(ndim: int) -> tuple[str | None, ...]:
    return ("batch",) + (None,) * (ndim - 2) + ("vocab",)


class Block(nnx.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)); dropout on each residual branch when training."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, lora: LoRAConfig | None):
        norm_args = dict(dtype=config.activation_dtype, param_dtype=config.parameter_dtype)
        self.pre_attention_norm = RMSNorm(config.d_model, **norm_args)
        self.attention = Attention(config, rngs=rngs, lora=lora)
        self.pre_mlp_norm = RMSNorm(config.d_model, **norm_args)
        self.mlp = GatedGeluMLP(
            config.d_model, config.d_ff, dtype=config.activation_dtype,
            param_dtype=config.parameter_dtype, rngs=rngs, lora=lora,
        )
        self.dropout = nnx.data(nnx.Dropout(config.dropout_rate, rngs=rngs) if config.dropout_rate > 0 else None)

    def _residual(self, x: jax.Array, branch: jax.Array, deterministic: bool) -> jax.Array:
        if self.dropout is not None:
            branch = self.dropout(branch, deterministic=deterministic)
        return x + branch.astype(x.dtype)

    def __call__(self, x, positions, mask: AttentionMask, deterministic: bool = True,
                 compute: ComputeConfig = REFERENCE):
        """Returns the block output and this layer's (rotated) keys and values."""
        attended, k, v = self.attention(self.pre_attention_norm(x), positions, mask, compute)
        x = self._residual(x, attended, deterministic)
        x = self._residual(x, self.mlp(self.pre_mlp_norm(x)), deterministic)
        return constrain(x, RESIDUAL_AXES), k, v

    def decode(self, x, positions, cache_k, cache_v, slot, key_mask):
        attended, cache_k, cache_v = self.attention.decode(
            self.pre_attention_norm(x), positions, cache_k, cache_v, slot, key_mask
        )
        x = x + attended.astype(x.dtype)
        x = x + self.mlp(self.pre_mlp_norm(x)).astype(x.dtype)
        return x, cache_k, cache_v


def stack_layers(blocks: list[nnx.Module]) -> nnx.Module:
    """One module of the blocks' structure whose every variable is the blocks' values stacked on
    a new leading axis, named `layers` in its logical axes (what a scan over layers runs)."""
    graphdef, _ = nnx.split(blocks[0])
    stacked = jax.tree.map(lambda *values: jnp.stack(values), *[nnx.state(block) for block in blocks])
    for _, variable in nnx.to_flat_state(stacked):
        axes = variable.get_metadata().get("out_sharding")
        if axes:
            variable.set_metadata(out_sharding=("layers",) + tuple(axes))
    return nnx.merge(graphdef, stacked)


def scan_blocks(blocks: nnx.Module, layer, x: jax.Array, compute: ComputeConfig = REFERENCE,
                extra: tuple = ()) -> tuple:
    """Run `layer(block, x, *extra_i) -> (x, *outputs)` over the stacked `blocks` with lax.scan
    (one layer compiled, under compute's remat policy): (final x, *outputs stacked [layers, ...]).
    Pure functions of the split state, so it runs at any trace level
    (inside a decoding loop over a model merged outside it, too)."""
    graphdef, state = nnx.split(blocks)

    def body(x, xs):
        layer_state, per_layer = xs
        x, *outputs = layer(nnx.merge(graphdef, layer_state), x, *per_layer)
        return x, tuple(outputs)

    # Inside a scan, CSE cannot merge a layer's recomputation with its forward pass.
    x, outputs = jax.lax.scan(compute.checkpointed(body, prevent_cse=False), x, (state, extra))
    return (x,) + outputs


class Transformer(nnx.Module):
    """Decoder-only LM. `lora` adds LoRA params; `prompt_length` > 0 prepends a soft prompt."""

    def __init__(
        self, config: ModelConfig, *, lora: LoRAConfig | None = None, prompt_length: int = 0, rngs: nnx.Rngs
    ):
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or prompt_length < 0:
            raise ValueError(f"prompt_length={prompt_length!r} must be an integer >= 0")
        self.config = config
        self.lora = lora
        self.prompt_length = prompt_length
        pdt = config.parameter_dtype
        # Embeddings ~ N(0, 1); the tied output projection divides by sqrt(d_model) (T5 / PaLM).
        self.embedding = make_param(
            jax.random.normal(rngs.params(), (config.vocab_size, config.d_model), jnp.float32).astype(pdt),
            ("vocab", "embed"),
        )
        # Built layer by layer either way, so a seed gives the same weights with or without scan.
        blocks = [Block(config, rngs=rngs, lora=lora) for _ in range(config.num_layers)]
        self.blocks = stack_layers(blocks) if config.scan_layers else nnx.List(blocks)
        self.final_norm = RMSNorm(config.d_model, dtype=config.activation_dtype, param_dtype=pdt)
        self.output_kernel = nnx.data(None)
        if not config.tie_embeddings:
            self.output_kernel = make_param(
                truncated_normal(rngs, (config.d_model, config.vocab_size), 1.0 / math.sqrt(config.d_model), pdt),
                ("embed", "vocab"),
            )
        self.prompt = nnx.data(None)
        if prompt_length > 0:
            # Embeddings of sampled vocabulary rows (prompt tuning's init); finetuning redoes it
            # with model.prompt.init_prompt_from_vocab after loading the pretrained embeddings.
            rows = sample_vocab_rows(rngs.params(), prompt_length, config.vocab_size)
            self.prompt = make_param(self.embedding[...][rows], ("prompt", "embed"), PromptParam)

    # ---- pieces shared by the full forward and decoding ----
    def embed(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.config.activation_dtype)

    def with_prompt(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Prepend the soft prompt (positions 0..P-1) and shift token positions by P."""
        if self.prompt is None:
            return x, positions
        batch, p = x.shape[0], self.prompt_length
        prompt = jnp.broadcast_to(self.prompt[...].astype(x.dtype), (batch, p, x.shape[-1]))
        prompt_positions = jnp.broadcast_to(jnp.arange(p, dtype=positions.dtype), (batch, p))
        return jnp.concatenate([prompt, x], axis=1), jnp.concatenate([prompt_positions, positions + p], axis=1)

    def logits(self, x: jax.Array) -> jax.Array:
        """Final norm and output projection; float32 logits."""
        x = self.final_norm(x)
        if self.output_kernel is None:
            table = self.embedding[...].astype(x.dtype)
            out = jnp.einsum("...d,vd->...v", x, table, preferred_element_type=jnp.float32)
            return constrain(out / math.sqrt(self.config.d_model), _logits_axes(x.ndim))
        kernel = self.output_kernel[...].astype(x.dtype)
        out = jnp.einsum("...d,dv->...v", x, kernel, preferred_element_type=jnp.float32)
        return constrain(out, _logits_axes(x.ndim))

    def cross_entropy_sums(self, hidden: jax.Array, targets: jax.Array, weights: jax.Array,
                           positions: str = "all") -> dict[str, jax.Array]:
        """model.loss.cross_entropy_sums(self.logits(hidden), targets, weights) (the same values and
        gradients) by model.loss.projected_cross_entropy_sums, or with positions="weighted" by
        weighted_cross_entropy_sums (logits only where the weight is not zero)."""
        if positions not in ("all", "weighted"):
            raise ValueError(f"positions={positions!r}; valid: 'all', 'weighted' "
                             f"(ComputeConfig.for_devices decides loss_positions='auto')")
        x = self.final_norm(hidden)
        sums = weighted_cross_entropy_sums if positions == "weighted" else projected_cross_entropy_sums
        if self.output_kernel is None:
            return sums(x, self.embedding[...], targets, weights, 1.0 / math.sqrt(self.config.d_model))
        return sums(x, self.output_kernel[...].T, targets, weights, 1.0)

    def _check_tokens(self, input_tokens) -> jax.Array:
        input_tokens = jnp.asarray(input_tokens)
        if input_tokens.ndim != 2:
            raise ValueError(f"input_tokens must be [batch, length], got shape {input_tokens.shape}")
        if input_tokens.shape[1] + self.prompt_length > self.config.max_len:
            raise ValueError(
                f"sequence length {input_tokens.shape[1]} (+ prompt {self.prompt_length}) exceeds "
                f"ModelConfig.max_len={self.config.max_len}"
            )
        return input_tokens

    def hidden_and_cache(self, input_tokens, segment_ids, positions, causal_attention, deterministic,
                         compute: ComputeConfig = REFERENCE):
        """Final hidden states over prompt + tokens, and each layer's keys / values (a list of
        [B, S, K, D], or one stacked [layers, B, S, K, D] array when the layers are scanned)."""
        batch, length = input_tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        mask = AttentionMask(segment_ids, causal_attention, self.prompt_length,
                             dense=compute.attention != "blockwise")
        x, positions = self.with_prompt(self.embed(input_tokens), jnp.asarray(positions, jnp.int32))
        x = constrain(x, RESIDUAL_AXES)

        def layer(block, x):
            return block(x, positions, mask, deterministic, compute)

        if self.config.scan_layers:
            return scan_blocks(self.blocks, layer, x, compute)
        keys, values = [], []
        for block in self.blocks:
            if compute.remat == "none":
                x, k, v = layer(block, x)
            else:  # remat a pure function of the block's state
                graphdef, state = nnx.split(block)
                x, k, v = compute.checkpointed(lambda s, x: layer(nnx.merge(graphdef, s), x))(state, x)
            keys.append(k)
            values.append(v)
        return x, keys, values

    def hidden_states(self, input_tokens, *, segment_ids=None, positions=None, causal_attention=None,
                      deterministic: bool = True, compute: ComputeConfig = REFERENCE) -> jax.Array:
        """Last layer's states [B, T, d] of the tokens (soft-prompt positions dropped), before the
        final norm: `logits` of them are the model's output, whole or in chunks."""
        input_tokens = self._check_tokens(input_tokens)
        x, _, _ = self.hidden_and_cache(input_tokens, segment_ids, positions, causal_attention, deterministic,
                                        compute)
        return x[:, self.prompt_length:]

    def __call__(
        self, input_tokens, *, segment_ids=None, positions=None, causal_attention=None, deterministic: bool = True,
        compute: ComputeConfig = REFERENCE,
    ) -> jax.Array:
        """Logits float32 [B, T, vocab] for input_tokens [B, T] (soft-prompt positions dropped).

        segment_ids (packing; 0 = padding), positions (restart per segment) and causal_attention
        (1 = bidirectional prefix) follow the seqio / t5x batch format; None means one
        unpadded segment, positions 0..T-1 and a fully causal mask. `compute` chooses how
        (remat, attention implementation), never what.
        """
        return self.logits(self.hidden_states(input_tokens, segment_ids=segment_ids, positions=positions,
                                              causal_attention=causal_attention, deterministic=deterministic,
                                              compute=compute))


def unstack_layer_params(params: dict) -> dict:
    """Pure params of a model with scanned layers -> those of the same model without scan
    (`blocks` stacked on a leading axis -> `blocks.0`, `blocks.1`, ...)."""
    stacked = params["blocks"]
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    return {**params, "blocks": {i: jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers)}}


def stack_layer_params(params: dict) -> dict:
    """The inverse of unstack_layer_params: per-layer `blocks` -> one stacked `blocks`."""
    layers = [params["blocks"][i] for i in sorted(params["blocks"])]
    return {**params, "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
