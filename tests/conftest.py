"""Test-wide settings: run JAX on the CPU with 8 simulated devices (set before jax loads)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE_PRETRAIN_STEPS = 16  # tiny model on the real aligned UL2 corpus; checkpoints every 4 steps


def subprocess_env(tmp_root: Path | None = None) -> dict:
    """Environment for a job run as a subprocess: one CPU device, the repo importable, and a
    shared compilation cache so repeated jobs do not recompile the same programs."""
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if tmp_root is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_root / "jax_cache")
    return env


@pytest.fixture(scope="session")
def smoke_pretrain_dir(tmp_path_factory) -> Path:
    """A real pretraining workdir shared by every test that needs checkpoints: the `tiny` model
    pretrained by train.pretrain (smoke.gin) for 16 steps, intermediate checkpoints at steps
    4, 8, 12, 16 (2048, 4096, 6144, 8192 tokens). Treat it as read-only."""
    root = tmp_path_factory.mktemp("smoke_pretrain")
    workdir = root / "workdir"
    result = subprocess.run(
        [sys.executable, "-m", "train.pretrain", "--gin_file=gin_configs/pretrain/smoke.gin",
         f"--gin_param=TrainConfig.num_steps={SMOKE_PRETRAIN_STEPS}",
         "--gin_param=TrainConfig.checkpoint_every_tokens=2048", "--no_progress", f"--workdir={workdir}"],
        cwd=REPO, env=subprocess_env(root), capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise RuntimeError(f"smoke pretraining failed:\n{result.stderr[-4000:]}")
    return workdir
