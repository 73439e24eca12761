"""ModelConfig: the shape and numerics of a decoder-only MQA/GQA transformer.

A plain dataclass: gin files configure it by dynamic registration
(`model.config.ModelConfig.d_model = 192`, gin_configs/models/*.gin), so this package needs no gin.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of the decoder; invalid combinations raise ValueError naming the field.

    num_kv_heads = 1 is multi-query attention (MQA), any divisor of num_heads is GQA and
    num_kv_heads == num_heads is plain multi-head attention.
    """

    vocab_size: int = 8192
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 1
    head_dim: int = 32
    d_ff: int = 512
    max_len: int = 2048
    dtype: str = "float32"  # activations / matmul inputs
    param_dtype: str = "float32"  # stored parameters
    tie_embeddings: bool = True
    dropout_rate: float = 0.0
    rope_max_wavelength: float = 10_000.0
    # Layers stacked on a leading `layers` axis and run by a scan (one layer compiled, not
    # num_layers): a parameter layout, so it is recorded with checkpoints.
    scan_layers: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        # gin or JSON may hand us numpy / jnp dtype objects: store the canonical string.
        for field in ("dtype", "param_dtype"):
            value = getattr(self, field)
            if not isinstance(value, str):
                try:
                    object.__setattr__(self, field, jnp.dtype(value).name)
                except TypeError as err:
                    raise ValueError(f"ModelConfig.{field}={value!r} is not a dtype; use one of {_DTYPES}") from err
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field (and what would be valid)."""
        positive = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff", "max_len")
        for field in positive:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{field}={value!r} must be a positive integer")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"ModelConfig.num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} "
                "(1 = multi-query attention, a divisor = grouped-query attention)"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even (rotary embeddings rotate pairs)")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in _DTYPES:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r} must be one of {_DTYPES}")
        for field in ("tie_embeddings", "scan_layers"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r} must be True or False")
        if not (0.0 <= float(self.dropout_rate) < 1.0):
            raise ValueError(f"ModelConfig.dropout_rate={self.dropout_rate!r} must be in [0, 1)")
        if not float(self.rope_max_wavelength) > 1.0:
            raise ValueError(f"ModelConfig.rope_max_wavelength={self.rope_max_wavelength!r} must be > 1")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ModelConfig.name={self.name!r} must be a non-empty string")

    @property
    def num_groups(self) -> int:
        """Query heads per K/V head."""
        return self.num_heads // self.num_kv_heads

    @property
    def activation_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def parameter_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (dtypes as strings) so checkpoints can record the config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """Inverse of to_dict; unknown keys raise ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**values)
