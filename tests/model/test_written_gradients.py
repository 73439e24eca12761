"""The functions whose backward pass is written out by hand (model.layers.project, gated_gelu,
model.loss.weighted_cross_entropy_sums) give autodiff's gradients of the plain expression
(float32, within 1e-5)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.layers import gated_gelu, project
from model.loss import cross_entropy_sums, weighted_cross_entropy_sums


def _grads(fn, *args):
    cotangent = jax.random.normal(jax.random.key(9), jax.eval_shape(fn, *args).shape)
    return jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize("x_shape,kernel_shape,n_in", [
    ((3, 5, 8), (8, 2, 6), 1),     # d -> (2, d_ff), as the MLP's input projection
    ((3, 5, 4, 2), (4, 2, 8), 2),  # (heads, head_dim) -> d, as the attention output
])
def test_project_gradients_are_autodiffs(x_shape, kernel_shape, n_in):
    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), kernel_shape)
    np.testing.assert_allclose(project(x, kernel, n_in), jnp.tensordot(x, kernel, axes=n_in), rtol=1e-6)
    written = _grads(lambda a, b: project(a, b, n_in), x, kernel)
    reference = _grads(lambda a, b: jnp.tensordot(a, b, axes=n_in), x, kernel)
    for got, want in zip(written, reference, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gated_gelu_gradient_is_autodiffs():
    hidden = 2.0 * jax.random.normal(jax.random.key(2), (3, 5, 2, 16))

    def plain(h):
        return jax.nn.gelu(h[..., 0, :], approximate=True) * h[..., 1, :]

    np.testing.assert_allclose(gated_gelu(hidden), plain(hidden), rtol=1e-6)
    (written,), (reference,) = _grads(gated_gelu, hidden), _grads(plain, hidden)
    np.testing.assert_allclose(written, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weighted_fraction,block", [
    (0.4, 16),   # weighted rows over several blocks, the last one partial
    (1.0, 512),  # every position weighted, one block for the whole (small) batch
    (0.0, 16),   # nothing weighted: no block runs, zero sums and gradients
])
def test_weighted_positions_loss_is_the_whole_loss(weighted_fraction, block):
    """Logits made only at the weighted positions (model.loss.weighted_cross_entropy_sums) give
    the sums and gradients of logits made everywhere, z-loss term included."""
    keys = jax.random.split(jax.random.key(3), 4)
    hidden, table = jax.random.normal(keys[0], (3, 40, 16)), jax.random.normal(keys[1], (64, 16))
    targets = jax.random.randint(keys[2], (3, 40), 0, 64)
    weights = (jax.random.uniform(keys[3], (3, 40)) < weighted_fraction).astype(jnp.float32) * 1.5

    def loss(sums_fn):
        def total(h, t):
            sums = sums_fn(h, t)
            return sums["cross_entropy"] + 0.1 * sums["log_z_squared"], sums
        return jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(hidden, table)

    (value, sums), grads = loss(lambda h, t: weighted_cross_entropy_sums(h, t, targets, weights, 0.25, block))
    (expected_value, expected_sums), expected = loss(
        lambda h, t: cross_entropy_sums(0.25 * jnp.einsum("btd,vd->btv", h, t), targets, weights))
    for name in expected_sums:
        np.testing.assert_allclose(sums[name], expected_sums[name], rtol=1e-5, atol=1e-5, err_msg=name)
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
