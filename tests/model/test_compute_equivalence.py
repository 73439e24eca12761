"""Every compute option and the scanned layout change how the loss is computed, never its value:
loss and gradients equal the reference path's (float32, within 1e-5) on packed prefix-LM rows
with padding, for MQA and GQA, with and without a soft prompt."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.attention import attend
from model.compute import ComputeConfig
from model.functional import apply_model, model_loss, split_params
from model.loss import cross_entropy_sums, loss_from_sums
from model.transformer import stack_layer_params, unstack_layer_params
from train.synthetic import synthetic_batch

VOCAB = 64
FEATURES = {
    "remat full": ComputeConfig(remat="full"),
    "remat save_matmuls": ComputeConfig(remat="save_matmuls"),
    "blockwise attention": ComputeConfig(attention="blockwise", attention_block=12),  # 40 rows: a partial block
    "dot_product attention": ComputeConfig(attention="dot_product"),
    "fused_cpu attention": ComputeConfig(attention="fused_cpu"),  # the C++ kernel for MQA; einsum for GQA
    "loss chunks": ComputeConfig(loss_chunk=16),  # 40 positions: a partial last chunk
    "weighted loss positions": ComputeConfig(loss_positions="weighted"),  # logits where the weight is not 0
    "all at once": ComputeConfig(remat="full", attention="blockwise", attention_block=16, loss_chunk=8),
}


def _batch(seq_len: int = 40):
    batch = synthetic_batch(3, rows=3, seq_len=seq_len, vocab_size=VOCAB, seed=1)
    assert (batch["decoder_segment_ids"].max(axis=1) > 1).all(), "rows must pack several segments"
    assert (batch["decoder_segment_ids"] == 0).any() and batch["decoder_causal_attention"].any()
    return {k: jnp.asarray(v) for k, v in batch.items()}


@functools.partial(jax.jit, static_argnames=("graphdef", "compute"))
def _loss_and_grads(graphdef, params, rest, batch, compute):
    def loss(p):
        return model_loss(graphdef, p, rest, batch, z_loss=1e-2, deterministic=True, compute=compute)[0]
    return jax.value_and_grad(loss)(params)


def _split(model):
    graphdef, params, rest = split_params(model)
    return graphdef, nnx.to_pure_dict(params), rest


def _assert_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=1e-5)


CASES = [(name, "mqa") for name in FEATURES] + [
    (name, "gqa+prompt") for name in ("blockwise attention", "dot_product attention", "fused_cpu attention",
                                      "all at once")] + [("fused_cpu attention", "mqa+prompt")]
MODELS = {"mqa": dict(), "gqa+prompt": dict(num_kv_heads=2, prompt_length=3), "mqa+prompt": dict(prompt_length=3)}


@pytest.mark.parametrize("name,model", CASES)
def test_feature_keeps_loss_and_gradients(name, model, small_model):
    kwargs = MODELS[model]
    graphdef, params, rest = _split(small_model(**kwargs))
    batch = _batch()
    loss, grads = _loss_and_grads(graphdef, params, rest, batch, ComputeConfig())
    loss_f, grads_f = _loss_and_grads(graphdef, params, rest, batch, FEATURES[name])
    assert np.isfinite(float(loss)) and float(loss) > 1.0
    np.testing.assert_allclose(float(loss_f), float(loss), rtol=1e-5)
    _assert_close(grads_f, grads)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _autodiff_of_logits(graphdef, params, rest, batch):
    """The loss as autodiff sees it written out: logits, then model.loss on them."""
    def loss(p):
        logits = apply_model(graphdef, p, rest, batch, deterministic=True)
        sums = cross_entropy_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])
        return loss_from_sums(sums, z_loss=1e-2)[0]
    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("model", ["tied", "untied", "gqa+prompt"])
def test_written_out_backward_pass_matches_autodiff(model, small_model):
    """model_loss's whole-sequence loss (projected_cross_entropy_sums, a hand-written backward pass)
    gives autodiff's loss and gradients, z-loss included, tied or untied output projection."""
    kwargs = {"tied": {}, "untied": dict(tie_embeddings=False), "gqa+prompt": MODELS["gqa+prompt"]}[model]
    graphdef, params, rest = _split(small_model(**kwargs))
    batch = _batch()
    loss, grads = _autodiff_of_logits(graphdef, params, rest, batch)
    loss_w, grads_w = _loss_and_grads(graphdef, params, rest, batch, ComputeConfig())
    np.testing.assert_allclose(float(loss_w), float(loss), rtol=1e-5)
    _assert_close(grads_w, grads)


@pytest.mark.parametrize("compute", [ComputeConfig(), FEATURES["all at once"]], ids=["reference", "features"])
def test_scanned_layers_same_init_loss_and_gradients(compute, small_model):
    plain = small_model(prompt_length=2)
    scanned = small_model(prompt_length=2, scan_layers=True)
    kernel = scanned.blocks.attention.q.kernel
    assert kernel.shape[0] == 2 and kernel.get_metadata()["out_sharding"][0] == "layers"
    graphdef, params, rest = _split(plain)
    graphdef_s, params_s, rest_s = _split(scanned)
    _assert_close(unstack_layer_params(params_s), params)  # a seed gives the same weights
    _assert_close(stack_layer_params(params), params_s)
    batch = _batch()
    loss, grads = _loss_and_grads(graphdef, params, rest, batch, ComputeConfig())
    loss_s, grads_s = _loss_and_grads(graphdef_s, params_s, rest_s, batch, compute)
    np.testing.assert_allclose(float(loss_s), float(loss), rtol=1e-5)
    _assert_close(unstack_layer_params(grads_s), grads)


def test_dropout_masks_are_the_same_scanned_or_not(small_model):
    plain = small_model(dropout_rate=0.3)
    scanned = small_model(dropout_rate=0.3, scan_layers=True)
    batch, key = _batch(), jax.random.key(7)

    def logits(model, deterministic=False, compute=ComputeConfig()):
        graphdef, params, rest = split_params(model)
        fn = jax.jit(lambda p, r, b, k: apply_model(graphdef, p, r, b, deterministic=deterministic,
                                                    dropout_key=k, compute=compute))
        return np.asarray(fn(params, rest, batch, key))

    reference = logits(plain)
    assert not np.allclose(reference, logits(plain, deterministic=True), atol=1e-3)  # dropout is on
    np.testing.assert_allclose(logits(scanned), reference, atol=1e-5)
    np.testing.assert_allclose(logits(scanned, compute=ComputeConfig(remat="full")), reference, atol=1e-5)


def test_bfloat16_activations_keep_float32_master_weights(small_model):
    """bf16 activations (ModelConfig.dtype) with float32 params: loss within 2% of float32's."""
    f32 = small_model()
    bf16 = small_model(dtype="bfloat16")
    graphdef, params, rest = _split(f32)
    graphdef_b, params_b, rest_b = _split(bf16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params_b))
    _assert_close(params_b, params)
    batch = _batch()
    loss, grads = _loss_and_grads(graphdef, params, rest, batch, ComputeConfig())
    loss_b, grads_b = _loss_and_grads(graphdef_b, params_b, rest_b, batch, ComputeConfig(loss_chunk=16))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads_b))
    np.testing.assert_allclose(float(loss_b), float(loss), rtol=2e-2)
    assert float(loss_b) != float(loss)  # it did run in bfloat16


@pytest.mark.parametrize("field,value", [("remat", "some"), ("attention", "flash"), ("attention_block", 0),
                                         ("loss_chunk", -1)])
def test_invalid_compute_option_names_the_value(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        ComputeConfig(**{field: value})


def test_blockwise_needs_the_mask_vectors():
    q = jnp.zeros((1, 4, 4, 8))
    with pytest.raises(ValueError, match="AttentionMask"):
        attend(q, q[:, :, :1], q[:, :, :1], jnp.ones((1, 4, 4), bool), ComputeConfig(attention="blockwise"))
