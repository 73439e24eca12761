"""Every pretraining gin file parses, includes a real model size's file, and describes a valid
run (checked without compute: token budget, checkpoints, mesh divisibility)."""
from pathlib import Path

import gin
import pytest

from model.sizes import get_config
from train.gin_setup import parse_gin
from train.pretrain import configured_model
from train.compile import parse_target
from train.partitioning import make_mesh, slice_topology
from train.trainer import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "gin_configs" / "pretrain"
RUN_FILES = sorted(p.name for p in CONFIG_DIR.glob("*.gin") if not p.name.endswith("_base.gin"))


def _value(binding: str):
    """A binding's value, following a %MACRO reference."""
    value = gin.query_parameter(binding)
    return gin.query_parameter(str(value)) if str(value).startswith("%") else value


class FakeDevice:
    """Stands in for a slice's devices: validating a mesh needs only their number."""
    platform = "tpu"


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_all_sizes_and_corpora_have_a_config():
    expected = {f"{s}_{c}.gin" for s in ("xs", "s", "m", "l") for c in ("aligned", "misaligned")}
    expected |= {f"{s}.gin" for s in ("1b", "2b", "4b", "8b", "16b")} | {"smoke.gin"}
    assert expected <= set(RUN_FILES)


@pytest.mark.parametrize("name", RUN_FILES)
def test_config_describes_a_valid_run(name):
    parse_gin([str(CONFIG_DIR / name)], [])
    model = configured_model()
    size = model.name
    expected = get_config(size)
    paper = size in ("1b", "2b", "4b", "8b", "16b")
    paper_overrides = {"dtype": "bfloat16", "scan_layers": True} if paper else {}
    assert model == expected.replace(**paper_overrides)  # the model comes from its size's gin file
    config = TrainConfig()
    assert config.seq_len <= model.max_len
    steps = config.total_steps()
    assert steps >= 1
    checkpoints = config.checkpoint_steps()
    assert checkpoints[-1] == steps and len(checkpoints) >= 2
    data, fsdp, tensor = (_value(f"make_mesh.{axis}") for axis in ("data", "fsdp", "tensor"))
    assert config.batch_size % (data * fsdp) == 0
    assert model.num_heads % tensor == 0 and model.d_ff % tensor == 0
    config.validate(make_mesh(data, fsdp, tensor, devices=[FakeDevice()] * (data * fsdp * tensor)),
                    max_len=model.max_len)
    if paper:  # sized for a named slice of at most 256 chips, with the paper's 1M-token batch
        target = parse_target(slice_topology())
        assert data * fsdp * tensor == target.chips <= 256
        assert (config.batch_size, config.seq_len) == (1024, 1024)
    if name.split("_")[0] in ("xs", "s", "m", "l"):
        assert gin.query_parameter("CorpusBatches.corpus") == name.split("_")[1].removesuffix(".gin")
