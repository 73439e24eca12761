"""The eval-kit modules and the results store import without jax, flax or tensorflow (plain scripts use them)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_modules_import_without_the_training_stack():
    code = (
        "import sys, eval.metrics, eval.trends, eval.multiple_choice, study.results, finetune.result\n"
        "heavy = [m for m in ('jax', 'flax', 'tensorflow', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
