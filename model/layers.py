"""Building blocks: RMSNorm, rotary embeddings, LoRA-capable projections, gated-GELU MLP."""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from model.lora import LoRAConfig
from model.sharding import constrain
from model.variables import make_param


def truncated_normal(rngs: nnx.Rngs, shape: Sequence[int], std: float, dtype) -> jax.Array:
    """Truncated normal (±2 std) scaled so that the resulting std is `std`."""
    # Var of a standard normal truncated to [-2, 2] is ~0.774; rescale to hit `std`.
    values = jax.random.truncated_normal(rngs.params(), -2.0, 2.0, tuple(shape), jnp.float32)
    return (values * (std / 0.87962566)).astype(dtype)


class RMSNorm(nnx.Module):
    """Root-mean-square layer norm with a learned scale (no bias, no mean subtraction)."""

    def __init__(self, dim: int, *, dtype, param_dtype, eps: float = 1e-6):
        self.scale = make_param(jnp.ones((dim,), param_dtype), ("embed",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float) -> jax.Array:
    """Rotate pairs (i, i + head_dim/2) of x [B, T, ..., head_dim] by angle position * freq_i."""
    head_dim = x.shape[-1]
    half = head_dim // 2
    freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * freq  # [B, T, half]
    angles = angles.reshape(angles.shape[:2] + (1,) * (x.ndim - 3) + (half,))
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """tensordot(x, kernel, n_in) with autodiff's gradients, the kernel's computed as
    x^T . dy in the kernel's own [in, out] order: autodiff makes (dy^T . x)^T, which XLA:CPU
    computes by first transposing dy (for the MLP's input projection, a [tokens, 2 x d_ff]
    copy per layer)."""
    return jnp.tensordot(x, kernel, axes=n_in)


def _project_fwd(x, kernel, n_in):
    return project(x, kernel, n_in), (x, kernel)


def _project_bwd(n_in, residuals, d_y):
    x, kernel = residuals
    in_size = math.prod(kernel.shape[:n_in])
    x2, kernel2 = x.reshape(-1, in_size), kernel.reshape(in_size, -1)
    d_y2 = d_y.reshape(x2.shape[0], kernel2.shape[1])
    d_x = jnp.einsum("no,io->ni", d_y2, kernel2, preferred_element_type=jnp.float32).astype(x.dtype)
    d_kernel = jnp.einsum("ni,no->io", x2, d_y2, preferred_element_type=jnp.float32).astype(kernel.dtype)
    return d_x.reshape(x.shape), d_kernel.reshape(kernel.shape)


project.defvjp(_project_fwd, _project_bwd)


class Projection(nnx.Module):
    """A bias-free linear map from trailing dims `in_shape` to `out_shape`, optionally with LoRA.

    y = x . W  (+ alpha/r * (x . A) . B with A random, B zero, so LoRA starts as the identity).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_axes: Sequence[str | None],
        out_axes: Sequence[str | None],
        *,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
        lora: LoRAConfig | None = None,
        init_scale: float = 1.0,
    ):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.out_axes = tuple(out_axes)
        fan_in = math.prod(in_shape)
        self.kernel = make_param(
            truncated_normal(rngs, self.in_shape + self.out_shape, init_scale / math.sqrt(fan_in), param_dtype),
            tuple(in_axes) + tuple(out_axes),
        )
        self.dtype = dtype
        # nnx.data: the attribute holds parameters when LoRA is on (and after merge_lora, None).
        self.lora_a = nnx.data(None)
        self.lora_b = nnx.data(None)
        self.lora_scaling = None
        if lora is not None:
            # A ~ fan-in scaled normal, B = 0 (Hu et al.): the update starts exactly at zero.
            a = truncated_normal(rngs, self.in_shape + (lora.rank,), 1.0 / math.sqrt(fan_in), param_dtype)
            self.lora_a = make_param(a, tuple(in_axes) + (None,), nnx.LoRAParam)
            self.lora_b = make_param(
                jnp.zeros((lora.rank,) + self.out_shape, param_dtype), (None,) + tuple(out_axes), nnx.LoRAParam
            )
            self.lora_scaling = lora.scaling

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_shape)
        x = x.astype(self.dtype)
        y = project(x, self.kernel[...].astype(self.dtype), n_in)
        if self.lora_a is not None:
            low = jnp.tensordot(x, self.lora_a[...].astype(self.dtype), axes=n_in)
            y = y + self.lora_scaling * jnp.tensordot(low, self.lora_b[...].astype(self.dtype), axes=1)
        # Batch over data x fsdp, the output's model dims as the weights split them (under a mesh).
        return constrain(y, ("batch",) + (None,) * (x.ndim - n_in - 1) + self.out_axes)


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


@jax.custom_vjp
def gated_gelu(hidden: jax.Array) -> jax.Array:
    """gelu(gate) * up for hidden [..., 2, d_ff] = (gate, up); autodiff's gradient, written out so
    that the gradient of hidden is one stack of the two halves: autodiff's (a pad of each half
    and their sum, which XLA:CPU then transposes) cost ~10% of the CPU train step."""
    return _gelu(hidden[..., 0, :]) * hidden[..., 1, :]


def _gated_gelu_fwd(hidden):
    return gated_gelu(hidden), hidden


def _gated_gelu_bwd(hidden, d_out):
    gate, up = hidden[..., 0, :], hidden[..., 1, :]
    activation, gelu_vjp = jax.vjp(_gelu, gate)
    (d_gate,) = gelu_vjp(d_out * up)
    return (jnp.stack([d_gate, d_out * activation], axis=-2),)


gated_gelu.defvjp(_gated_gelu_fwd, _gated_gelu_bwd)


class GatedGeluMLP(nnx.Module):
    """Feed-forward block: wo(gelu(x wi_gate) * (x wi_up)), gate and up fused into one kernel."""

    def __init__(self, d_model: int, d_ff: int, *, dtype, param_dtype, rngs: nnx.Rngs, lora: LoRAConfig | None):
        def lora_for(name: str) -> LoRAConfig | None:
            return lora if lora is not None and name in lora.targets else None

        self.wi = Projection(
            (d_model,), (2, d_ff), ("embed",), (None, "mlp"),
            dtype=dtype, param_dtype=param_dtype, rngs=rngs, lora=lora_for("wi"),
        )
        self.wo = Projection(
            (d_ff,), (d_model,), ("mlp",), ("embed",),
            dtype=dtype, param_dtype=param_dtype, rngs=rngs, lora=lora_for("wo"),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.wo(gated_gelu(self.wi(x)))
