"""Mesh construction and logical-axis rules (MQA kv never split over tensor)."""
import jax
import pytest
from jax.sharding import PartitionSpec as P

from model.sharding import data_ways
from train.partitioning import make_mesh, spec_for


def test_mesh_must_match_device_count():
    assert len(jax.devices()) == 8
    with pytest.raises(ValueError, match=r"3 x fsdp=1 x tensor=1 = 3 devices, but 8 devices"):
        make_mesh(data=3)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert data_ways(mesh) == 4
    assert make_mesh(devices=jax.devices()[:1]).size == 1


def test_mqa_kv_projection_is_never_split_over_tensor():
    mesh = make_mesh(data=1, fsdp=2, tensor=4)
    # [embed, kv_heads=1, head_dim]: kv heads cannot split; embed goes to fsdp
    assert spec_for((64, 1, 16), ("embed", "kv_heads", "head_dim"), mesh) == P("fsdp")
    # GQA with 4 kv heads can use tensor
    assert spec_for((64, 4, 16), ("embed", "kv_heads", "head_dim"), mesh) == P("fsdp", "tensor")
    # query heads split over tensor
    assert spec_for((64, 8, 16), ("embed", "heads", "head_dim"), mesh) == P("fsdp", "tensor")


def test_indivisible_dims_are_replicated_and_axes_used_once():
    mesh = make_mesh(data=1, fsdp=2, tensor=4)
    assert spec_for((63, 10), ("embed", "mlp"), mesh) == P()
    # both dims ask for tensor: only the first gets it
    assert spec_for((8, 8), ("mlp", "vocab"), mesh) == P("tensor")
    assert spec_for((8,), None, mesh) == P()


def test_rules_are_configurable():
    mesh = make_mesh(data=1, fsdp=2, tensor=4)
    rules = (("embed", ("fsdp", "tensor")),)
    assert spec_for((64, 10), ("embed", "mlp"), mesh, rules) == P(("fsdp", "tensor"))
    with pytest.raises(ValueError, match="mesh axis 'model'"):
        spec_for((64,), ("embed",), mesh, (("embed", "model"),))
