"""The layers whose backward pass is written out by hand (model.layers.project, gated_gelu) give
autodiff's gradients of the plain expression (float32, within 1e-5)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.layers import gated_gelu, project


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
