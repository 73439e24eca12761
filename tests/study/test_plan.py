"""`python -m study plan` validates every configuration of a preset's grid without an accelerator,
costs it, defers what needs data this machine lacks, and fails naming a bad configuration."""
import json

import pytest

from model.sizes import count_params, get_config
from study.__main__ import main
from study.spec import load_spec
from train.metrics import flops_per_token_from_config


@pytest.mark.parametrize("preset", ["smoke", "demo", "alignment", "paper"])
def test_every_preset_plans_and_validates(preset, capsys):
    assert main(["plan", f"--gin_file=gin_configs/studies/{preset}.gin"]) == 0
    out = capsys.readouterr().out
    runs = len(load_spec([f"gin_configs/studies/{preset}.gin"]).grid())
    assert f"{runs} finetuning runs" in out and out.rstrip().splitlines()[-1].startswith("valid")
    assert "ERROR" not in out and "device-hours at 40% MFU on v5p" in out


def test_paper_plan_costs_the_grid_and_defers_the_missing_data(capsys):
    assert main(["plan", "--gin_file=gin_configs/studies/paper.gin", "--json", "--chip=h100", "--mfu=0.5"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["valid"] and plan["runs"] == 540 and plan["pretraining_runs"] == 5
    model = get_config("1b").replace(dtype="bfloat16")
    tokens = 190_736 * 1024 * 1024  # 200,001,191,936 tokens of 1M-token steps
    one_b = tokens * flops_per_token_from_config(model.to_dict(), count_params(model)["non_embedding"], 1024)
    assert one_b < plan["pretraining_flops"] < 40 * one_b  # five sizes, 1b the smallest
    assert plan["device_hours"] == pytest.approx((plan["pretraining_flops"] + plan["finetuning_flops"])
                                                 / (989e12 * 0.5) / 3600)
    deferred = [c for c in plan["checks"] if c["status"] == "deferred"]
    assert deferred and all("spm_en_de_32k.model does not exist" in c["detail"] for c in deferred)


@pytest.mark.parametrize("params, message", [
    (["StudySpec.lora_ranks=[64]"], "lora_rank=64 exceeds the layer width d_model=32"),
    (["StudySpec.seq_len=300"], "seq_len=300 = 300 exceeds max_len=256 of model 'tiny'"),
])
def test_a_bad_configuration_fails_the_plan_naming_it(params, message, capsys):
    assert main(["plan", "--gin_file=gin_configs/studies/smoke.gin", *[f"--gin_param={p}" for p in params]]) == 2
    out = capsys.readouterr().out
    assert message in out and "INVALID" in out
