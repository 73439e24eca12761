"""train.compile: the tiny job's real train step compiled ahead of time for a small TPU slice
(libtpu, no TPU) and for simulated CPUs gives sane numbers; bad input exits 2 with one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from train.compile import HBM_GIB, main, parse_target
from train.hlo_flops import matmul_flops

REPO = Path(__file__).resolve().parents[2]
SMOKE = "--gin_file=gin_configs/pretrain/smoke.gin"


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _run(capsys, *args) -> tuple[int, dict | str, str]:
    code = main([SMOKE, *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if "--json" in args and out.strip() else out), err


def test_tiny_step_compiles_for_a_tpu_slice_with_sane_numbers(capsys):
    code, report, _ = _run(capsys, "--topology=v5e:2x2", "--gin_param=make_mesh.fsdp=4", "--json")
    assert code == 0 and report["fits"] is True
    assert report["chips"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert report["device_kind"].startswith("TPU v5")
    assert report["hbm_bytes"] == HBM_GIB["v5e"] * 1024**3
    assert 0 < report["per_chip_bytes"] < report["hbm_bytes"]
    assert report["memory"]["arguments"] > 0 and report["compile_s"] > 0
    assert 0.5 < report["compiled_flops"] / report["model_flops"] < 2.0
    assert report["sequences_per_chip"] == 2 and report["unknown_trip_counts"] == 0


def test_scanned_layers_count_the_same_flops(capsys):
    """XLA's cost analysis counts a scanned layer once; hlo_flops counts it num_layers times."""
    args = ("--topology=v5e:2x2", "--gin_param=make_mesh.fsdp=4", "--json")
    _, plain, _ = _run(capsys, *args)
    gin.clear_config()
    _, scanned, _ = _run(capsys, *args, "--gin_param=model.config.ModelConfig.scan_layers=True")
    assert scanned["scan_layers"] and not plain["scan_layers"]
    assert scanned["compiled_flops"] == pytest.approx(plain["compiled_flops"], rel=0.02)


def test_human_readable_report_and_finetuning_steps(capsys):
    code, text, _ = _run(capsys, "--topology=cpu:8", "--gin_param=make_mesh.fsdp=8")
    assert code == 0
    for word in ("mesh       data 1 x fsdp 8 x tensor 1", "8 x 64 tokens global, 1 sequences per chip",
                 "fits", "compiled", "compile "):
        assert word in text, text
    for method, flag in (("lora", "--lora_rank=2"), ("prompt", "--prompt_length=4")):
        gin.clear_config()
        code, report, _ = _run(capsys, "--topology=cpu:8", "--gin_param=make_mesh.fsdp=8", f"--finetune={method}",
                               flag, "--json")
        assert code == 0 and report["method"] == method and report["hbm_bytes"] is None
        assert 0 < report["trainable_params"] < report["params"] / 10


@pytest.mark.parametrize("args,message", [
    (["--topology=v9:2x2"], "unknown topology 'v9:2x2'"),
    (["--topology=cpu:3"], "mesh data=1 x fsdp=1 x tensor=1 = 1 devices, but 3"),
    (["--topology=cpu:2", "--finetune=adapter"], "unknown finetuning method 'adapter'"),
    (["--topology=cpu:1", "--gin_param=TrainConfig.remat='most'"], "TrainConfig.remat='most'"),
])
def test_bad_input_exits_2_with_one_line(capsys, args, message):
    code, _, err = _run(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err


def test_parse_target():
    assert parse_target("v5p:4x4x8").chips == 128 and parse_target("v5p:4x4x8").hbm_bytes == 95 * 1024**3
    assert parse_target("cpu:8").hbm_bytes is None
    with pytest.raises(ValueError, match="GENERATION:AxBxC"):
        parse_target("v5p-256")


def test_hlo_flops_multiplies_loop_bodies_by_their_trip_count():
    hlo = """HloModule m

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[4,8] get-tuple-element(%p), index=1
  %w = f32[8,8] constant({...})
  %y = f32[4,8] dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %two = s32[] constant(2)
  %next = s32[] add(%i, %two)
  ROOT %t = (s32[], f32[4,8]) tuple(%next, %y)
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
  %p = (s32[], f32[4,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(10)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %a = f32[4,8] parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[4,8]) tuple(%zero, %a)
  %loop = (s32[], f32[4,8]) while(%init), condition=%cond, body=%body
  ROOT %out = f32[4,8] get-tuple-element(%loop), index=1
}
"""
    result = matmul_flops(hlo)
    assert result == {"flops": 5 * 2 * 4 * 8 * 8, "loops": 1, "unknown_trip_counts": 0}


@pytest.mark.slow
def test_paper_16b_job_fits_its_slice_as_configured():
    """The headline claim: gin_configs/pretrain/16b.gin, with no more flags, compiles for its own
    slice and fits (about 100 s on a 2-core CPU)."""
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "train.compile", "--gin_file=gin_configs/pretrain/16b.gin",
                             "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["fits"] and report["chips"] == 256 and report["model"] == "16b"
    assert report["global_batch"] == [1024, 1024] and report["scan_layers"]
    assert 1.0 < report["compiled_flops"] / report["model_flops"] < 1.5  # full remat recomputes the forward
