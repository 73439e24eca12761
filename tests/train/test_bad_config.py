"""Bad configuration fails before any compute, with a message naming the value."""
import gin
import pytest

import train.state
from train.pretrain import main

SMOKE = ["--gin_file=gin_configs/pretrain/smoke.gin",
         "--gin_param=pretrain.batch_source=@SyntheticBatches",
         "--gin_param=SyntheticBatches.vocab_size=128",
         "--gin_param=model.config.ModelConfig.vocab_size=128",
         "--gin_param=make_mesh.data=8",  # the 8 simulated devices
         "--no_progress"]


@pytest.fixture(autouse=True)
def no_compute(monkeypatch):
    """Planning shardings is the first compute step: reaching it means validation came too late."""
    def fail(*args, **kwargs):
        raise AssertionError("compute started before the configuration was validated")
    monkeypatch.setattr(train.state, "plan", fail)
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("params, message", [
    (["model.config.ModelConfig.num_kv_heads=3"], "num_kv_heads=3 must divide num_heads=4"),
    (["SyntheticBatches.vocab_size=100"], "vocab_size=128 but the data's vocabulary has 100 ids"),
    (["make_mesh.data=3"], "data=3 x fsdp=1 x tensor=1 = 3 devices, but 8 devices"),
    (["make_mesh.data=4", "make_mesh.fsdp=2", "TrainConfig.batch_size=12"],
     "batch_size=12 is not divisible by the data axes (data=4 x fsdp=2 = 8)"),
    (["TrainConfig.num_steps=None", "TrainConfig.token_budget=100"],
     "token_budget=100 is smaller than one batch (batch_size 8 x seq_len 64 = 512 tokens)"),
    (["TrainConfig.checkpoint_tokens=[1000000000]"], "checkpoint_tokens entry 1000000000 is outside"),
    (["TrainConfig.seq_len=100000"], "seq_len=100000 exceeds the model's max_len"),
    (["pretrain.batch_source=None"], "no batch source configured"),
])
def test_bad_config_fails_before_compute(tmp_path, capsys, params, message):
    argv = SMOKE + [f"--gin_param={p}" for p in params] + [f"--workdir={tmp_path}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
    assert (tmp_path / "config.gin").exists()
