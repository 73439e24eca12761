"""On a CPU-only machine importing `model` makes glibc keep freed memory, so a jitted step's
large outputs reuse pages instead of faulting fresh ones in on every call."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model import host_memory

REPO = Path(__file__).resolve().parents[2]
# Page faults per call of a jitted op writing a fresh 64 MiB array (16,384 pages of 4 KiB).
PROBE = """
import resource, model, jax, jax.numpy as jnp
x = jnp.ones((2048, 8192), jnp.float32)
double = jax.jit(lambda x: x * 2.0)
for _ in range(12):  # the heap grows for the first few calls, then is reused
    double(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    double(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""
PAGES = 2048 * 8192 * 4 // 4096


def faults_per_call(**env) -> float:
    environment = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **env)
    result = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True,
                            timeout=300, check=True)
    return float(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or host_memory.accelerator_visible(),
                    reason="glibc malloc on a CPU-only host")
def test_freed_memory_is_reused_unless_turned_off():
    assert faults_per_call() < PAGES / 4
    assert faults_per_call(FTSCALE_HOST_MEMORY="default") > PAGES / 2  # glibc's default: mmap per call
