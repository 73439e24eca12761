"""Fused float32 multi-query attention for CPU (mqa_attention.cc) and its backward pass.

The same function as model.attention.grouped_attention with one K/V head, as two XLA FFI calls:
the forward pass keeps only the output and each query row's log-sum-exp, and the backward pass
recomputes the probabilities from them block by block. The custom call is not partitioned:
on a multi-device mesh XLA would gather its operands, so ComputeConfig picks it for one CPU device.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from model.kernels import build

_FORWARD = "ftscale_mqa_attention_forward"
_BACKWARD = "ftscale_mqa_attention_backward"


@functools.cache
def _register() -> None:
    library = build.load("mqa_attention")
    jax.ffi.register_ffi_target(_FORWARD, jax.ffi.pycapsule(library.MqaAttentionForward), platform="cpu")
    jax.ffi.register_ffi_target(_BACKWARD, jax.ffi.pycapsule(library.MqaAttentionBackward), platform="cpu")


@functools.cache  # a failed build is not retried in every program this process builds
def unavailable_reason() -> str | None:
    """None when the kernel is built and registered here, else why not."""
    try:
        _register()
    except build.KernelUnavailable as error:
        return str(error)
    return None


def supports(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> bool:
    """Whether the kernel computes attention of q [B,T,H,D] over k/v [B,S,K,D] with mask [B,T,S]:
    one K/V head, float32 activations and a boolean mask."""
    return (k.shape[2] == 1 and all(x.dtype == jnp.float32 for x in (q, k, v))
            and mask.dtype == jnp.bool_ and mask.shape == (q.shape[0], q.shape[1], k.shape[1]))


def _call(target: str, results: tuple, *args: jax.Array) -> tuple:
    _register()
    shapes = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in results)
    return jax.ffi.ffi_call(target, shapes, vmap_method="sequential")(*args)


def _forward(q, k, v, mask):
    out, lse = _call(_FORWARD, (q.shape, q.shape[:3]), q, k, v, mask)
    return out, (q, k, v, mask, out, lse)


def _backward(residuals, d_out):
    q, k, v, mask, out, lse = residuals
    dq, dk, dv = _call(_BACKWARD, (q.shape, k.shape, v.shape), q, k, v, mask, out, lse, d_out)
    return dq, dk, dv, None


@jax.custom_vjp
def mqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention of q [B,T,H,D] (already scaled) over k/v [B,S,D] where mask [B,T,S]
    allows -> [B,T,H,D]; a query with no allowed key attends uniformly to all keys."""
    return _forward(q, k, v, mask)[0]


mqa_attention.defvjp(_forward, _backward)
