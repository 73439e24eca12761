"""Exact resume: a run SIGKILLed after a checkpoint and restarted ends bit-identical (final
params and the whole loss sequence) to a run that was never interrupted."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = Path(__file__).resolve().parents[2]
COMMON = [
    "--gin_file=gin_configs/pretrain/smoke.gin",
    "--gin_param=pretrain.batch_source=@SyntheticBatches",
    "--gin_param=SyntheticBatches.vocab_size=128", "--gin_param=model.config.ModelConfig.vocab_size=128",
    "--gin_param=pretrain.dev_batches=1",
    "--gin_param=TrainConfig.num_steps=16",
    "--gin_param=TrainConfig.seq_len=32",
    "--gin_param=TrainConfig.latest_every_steps=4",
    "--gin_param=TrainConfig.checkpoint_every_tokens=2048",  # every 8 steps
    "--gin_param=TrainConfig.peak_flops=1e10",
    "--no_progress",
]


def _env(cache: Path) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device, as smoke.gin's 1x1x1 mesh expects
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)  # the three runs compile the same programs
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _losses(workdir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _final_arrays(workdir: Path) -> list[np.ndarray]:
    restored = [ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "16" / item)
                for item in ("params", "opt_state")]
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(restored)]


@pytest.mark.slow
def test_sigkill_and_restart_is_bit_identical(tmp_path):
    env = _env(tmp_path / "jax_cache")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run([sys.executable, "-m", "train.pretrain", *COMMON, f"--workdir={straight}"],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=600)

    slow = COMMON + ["--gin_param=SyntheticBatches.delay_seconds=0.4"]
    process = subprocess.Popen([sys.executable, "-m", "train.pretrain", *slow, f"--workdir={killed}"],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 500
    while not (killed / "latest" / "8").is_dir():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists()
    assert (killed / "latest" / "8").is_dir()

    result = subprocess.run([sys.executable, "-m", "train.pretrain", *COMMON, f"--workdir={killed}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert 8 <= summary["resumed_from_step"] < 16

    assert _losses(killed) == _losses(straight)
    assert [s for s, _ in _losses(straight)] == list(range(1, 17))
    for a, b in zip(_final_arrays(straight), _final_arrays(killed), strict=True):
        np.testing.assert_array_equal(a, b)
