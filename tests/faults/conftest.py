"""Fault injection (issue 19): every fault ends in a correct result, or exit code 2 with one line
naming the file or value, and what was there before is byte-identical afterwards.

The modules here share faults_helpers (snapshots, one-line error checks, corruption), the
trainer's tiny in-process runs (tests/train) and the study fakes (tests/study)."""
import os
import sys
from pathlib import Path

import gin
import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
for helpers in (HERE, TESTS / "train", TESTS / "study"):
    if str(helpers) not in sys.path:
        sys.path.insert(0, str(helpers))


@pytest.fixture
def cli_env() -> dict:
    """Environment for a CLI run as a subprocess: one CPU device, quiet TensorFlow."""
    return dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(autouse=True)
def clean_gin():
    """In-process CLI calls parse (and lock) gin: each test starts and ends with a clear config."""
    gin.clear_config()
    yield
    gin.clear_config()
