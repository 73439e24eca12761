"""MQA/GQA attention equals plain multi-head attention with the shared K/V heads broadcast."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.attention import Attention, grouped_attention


def reference_mha(q, k, v, mask):
    """Textbook multi-head attention after repeating each K/V head for its query heads."""
    groups = q.shape[2] // k.shape[2]
    k_full = jnp.repeat(k, groups, axis=2)
    v_full = jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k_full)
    scores = jnp.where(mask[:, None], scores, -jnp.inf)
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), v_full)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 1), (8, 2), (6, 3), (4, 4)])
def test_grouped_attention_matches_reference(num_heads, num_kv_heads, small_config):
    rng = np.random.default_rng(0)
    batch, q_len, kv_len, dim = 2, 5, 7, 8
    q = rng.normal(size=(batch, q_len, num_heads, dim)).astype(np.float32)
    k = rng.normal(size=(batch, kv_len, num_kv_heads, dim)).astype(np.float32)
    v = rng.normal(size=(batch, kv_len, num_kv_heads, dim)).astype(np.float32)
    mask = rng.random((batch, q_len, kv_len)) < 0.6
    mask[:, :, 0] = True
    np.testing.assert_allclose(
        jax.jit(grouped_attention)(q, k, v, mask), jax.jit(reference_mha)(q, k, v, mask), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 1), (8, 2)])
def test_grouped_attention_gradients_match_reference(num_heads, num_kv_heads):
    """One K/V head takes its own batched-matmul path: its gradients are the reference's too."""
    rng = np.random.default_rng(1)
    q, k, v, cotangent = (jnp.asarray(rng.normal(size=(2, 5, h, 8)), jnp.float32)
                          for h in (num_heads, num_kv_heads, num_kv_heads, num_heads))
    mask = jnp.asarray(np.tril(np.ones((5, 5), bool)) | (rng.random((2, 5, 5)) < 0.3))

    def gradients(attention):
        return jax.jit(jax.grad(lambda q, k, v: jnp.vdot(attention(q, k, v, mask), cotangent), (0, 1, 2)))(q, k, v)

    for ours, expected in zip(gradients(grouped_attention), gradients(reference_mha), strict=True):
        np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_attention_module_equals_mha_with_repeated_kv_kernel(num_kv_heads, small_config):
    """An MQA/GQA layer equals an MHA layer whose K/V kernels repeat the shared heads (head h uses kv head h // G)."""
    config = small_config(num_heads=4, num_kv_heads=num_kv_heads)
    grouped = Attention(config, rngs=nnx.Rngs(1))
    mha = Attention(config.replace(num_kv_heads=4), rngs=nnx.Rngs(2))
    mha.q.kernel[...] = grouped.q.kernel[...]
    mha.o.kernel[...] = grouped.o.kernel[...]
    mha.kv.kernel[...] = jnp.repeat(grouped.kv.kernel[...], 4 // num_kv_heads, axis=2)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, config.d_model)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((6, 6), bool)), (2, 6, 6))
    apply = nnx.jit(lambda layer, x: layer(x, positions, mask))
    out_grouped, k, _ = apply(grouped, x)
    out_mha, _, _ = apply(mha, x)
    assert k.shape == (2, 6, num_kv_heads, config.head_dim)  # the cache holds only the shared heads
    np.testing.assert_allclose(out_grouped, out_mha, atol=1e-5, rtol=1e-5)
    # The reference catches a wrong grouping: a shuffled K/V assignment must differ.
    if num_kv_heads == 2:
        shuffled = jnp.tile(grouped.kv.kernel[...], (1, 1, 2, 1))  # head h -> kv head h % 2 (wrong)
        mha.kv.kernel[...] = shuffled
        assert not np.allclose(apply(mha, x)[0], out_grouped, atol=1e-4)
