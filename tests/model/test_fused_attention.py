"""The fused CPU attention kernel (model.kernels.mqa_attention) computes what the einsum reference
does, forward and backward, on every mask shape the model makes (packed segments, padding
queries with no key, prefix-LM blocks, soft prompts) and on shapes off its vector width; and
the "auto" compute options (this kernel, the loss at weighted positions) apply only where they
should."""
import dataclasses
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.attention import AttentionMask, grouped_attention
from model.compute import ComputeConfig
from model.kernels import build, mqa_attention


def _inputs(seed, batch, length, heads, dim, *, prompt=0, prefix=False):
    rng = np.random.default_rng(seed)
    q, k, v, cotangent = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in (
        (batch, length + prompt, heads, dim), (batch, length + prompt, 1, dim), (batch, length + prompt, 1, dim),
        (batch, length + prompt, heads, dim)))
    segments = np.ones((batch, length), np.int32)
    segments[0, length // 2:] = 2                 # two packed segments
    segments[-1, length - max(1, length // 4):] = 0  # padding: queries with no key at all
    causal = np.zeros((batch, length), bool)
    if prefix:
        causal[:, :length // 3] = True            # a bidirectional prefix
    mask = AttentionMask(jnp.asarray(segments), jnp.asarray(causal) if prefix else None, prompt).dense
    return q, k, v, mask, cotangent


def _value_and_gradients(attention, q, k, v, mask, cotangent):
    def loss(q, k, v):
        return jnp.vdot(attention(q, k, v, mask), cotangent)
    out = jax.jit(attention)(q, k, v, mask)
    return out, jax.jit(jax.grad(loss, (0, 1, 2)))(q, k, v)


def _fused(q, k, v, mask):
    return mqa_attention.mqa_attention(q, k[:, :, 0], v[:, :, 0], mask)


@pytest.mark.parametrize("batch,length,heads,dim,prompt,prefix", [
    (2, 16, 4, 8, 0, False),    # head_dim under one vector, keys exactly one
    (3, 37, 4, 16, 0, True),    # keys off the vector width, a prefix-LM block
    (2, 50, 6, 12, 3, True),    # head_dim off the vector width, a soft prompt
    (4, 128, 8, 32, 0, False),  # the l size's attention shape (batch cut)
    (1, 5, 1, 32, 0, False),    # one query head
])
def test_fused_kernel_equals_einsum_forward_and_backward(batch, length, heads, dim, prompt, prefix):
    q, k, v, mask, cotangent = _inputs(0, batch, length, heads, dim, prompt=prompt, prefix=prefix)
    assert not np.asarray(mask).any(axis=-1).all(), "some queries must have no key (padding)"
    assert mqa_attention.supports(q, k, v, mask)
    out, grads = _value_and_gradients(_fused, q, k, v, mask, cotangent)
    expected_out, expected_grads = _value_and_gradients(grouped_attention, q, k, v, mask, cotangent)
    np.testing.assert_allclose(out, expected_out, atol=2e-6, rtol=1e-5)
    for name, ours, expected in zip("qkv", grads, expected_grads, strict=True):
        np.testing.assert_allclose(ours, expected, atol=2e-5 * float(jnp.abs(expected).max()), err_msg=f"d{name}")


def test_fused_kernel_under_remat_and_vmap():
    """Rematerialised (the kernel reruns in the backward pass) and vmapped over a leading axis
    (the call loops): the same gradients."""
    q, k, v, mask, cotangent = _inputs(1, 2, 24, 4, 16, prefix=True)
    _, expected = _value_and_gradients(grouped_attention, q, k, v, mask, cotangent)
    _, remat = _value_and_gradients(jax.checkpoint(_fused), q, k, v, mask, cotangent)
    for ours, reference in zip(remat, expected, strict=True):
        np.testing.assert_allclose(ours, reference, atol=1e-5)
    stacked = [jnp.stack([x, 2 * x]) for x in (q, k, v)]
    out = jax.jit(jax.vmap(_fused, in_axes=(0, 0, 0, None)))(*stacked, mask)
    np.testing.assert_allclose(out[1], grouped_attention(*(2 * x for x in (q, k, v)), mask), atol=1e-5)


def test_supports_only_float32_mqa_with_a_boolean_mask():
    q, k, v, mask, _ = _inputs(2, 1, 8, 4, 8)
    assert mqa_attention.supports(q, k, v, mask)
    assert not mqa_attention.supports(q, jnp.concatenate([k, k], 2), jnp.concatenate([v, v], 2), mask)
    assert not mqa_attention.supports(q.astype(jnp.bfloat16), k, v, mask)
    assert not mqa_attention.supports(q, k, v, mask.astype(jnp.float32))


@dataclasses.dataclass
class _Device:
    platform: str


def test_auto_attention_is_the_kernel_on_one_cpu_device_only():
    auto = ComputeConfig(attention="auto")
    assert auto.for_devices(jax.devices()[:1]).attention == "fused_cpu"
    assert auto.for_devices(jax.devices()[:2]).attention == "einsum"  # not partitioned: no gathers
    assert auto.for_devices([_Device("tpu")]).attention == "einsum"
    assert ComputeConfig(attention="blockwise").for_devices(jax.devices()[:1]).attention == "blockwise"
    with pytest.raises(ValueError, match=r"attention='fused_cpu' runs on CPU devices only, not \['tpu'\]"):
        ComputeConfig(attention="fused_cpu").for_devices([_Device("tpu")])


def test_auto_loss_positions_are_the_weighted_ones_on_one_cpu_device_only():
    auto = ComputeConfig(loss_positions="auto")
    assert auto.for_devices(jax.devices()[:1]).loss_positions == "weighted"
    assert auto.for_devices(jax.devices()[:2]).loss_positions == "all"  # rows would be gathered across devices
    assert auto.for_devices([_Device("gpu")]).loss_positions == "all"
    assert dataclasses.replace(auto, loss_chunk=32).for_devices(jax.devices()[:1]).loss_positions == "all"
    with pytest.raises(ValueError, match=r"loss_positions='weighted' with loss_chunk=32: both bound the logits"):
        ComputeConfig(loss_positions="weighted", loss_chunk=32)
    with pytest.raises(ValueError, match=r"loss_positions='some'; valid: \['auto', 'all', 'weighted'\]"):
        ComputeConfig(loss_positions="some")


def test_auto_attention_without_the_kernel_says_why_and_uses_einsum(monkeypatch, caplog):
    monkeypatch.setattr(mqa_attention, "unavailable_reason", lambda: "no C++ compiler 'g++' on PATH")
    with caplog.at_level(logging.WARNING):
        assert ComputeConfig(attention="auto").for_devices(jax.devices()[:1]).attention == "einsum"
    assert "fused CPU kernel is unavailable: no C++ compiler 'g++' on PATH" in caplog.text


@pytest.mark.parametrize("compiler,message", [
    ("no-such-compiler-xyz", "no C++ compiler 'no-such-compiler-xyz' on PATH"),
    ("false", "building mqa_attention.cc failed"),  # a compiler that fails
])
def test_kernel_build_failure_is_a_clear_error(compiler, message, monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", compiler)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(build.KernelUnavailable, match=re.escape(message)):
        build.load.__wrapped__("mqa_attention")
    assert not any(path.suffix == ".so" for path in tmp_path.rglob("*")), "no partial library left behind"


def test_unwritable_kernel_cache_is_a_clear_error(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(build.KernelUnavailable, match=re.escape(f"cannot build or load {blocker}")):
        build.load.__wrapped__("mqa_attention")
