"""The smoke study end to end on the real pipeline (pretraining, finetuning, evaluation, fits, report),
as a user runs it: `python -m study --gin_file=gin_configs/studies/smoke.gin --workdir=DIR`."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from study.report.writer import SECTION_TITLES
from study.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
    workdir = tmp_path / "smoke"
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
    start = time.perf_counter()
    # the size pretrained as its own job (as every host of a slice runs it), then the study
    pretrained = subprocess.run([sys.executable, "-m", "study", "pretrain", "--gin_file=gin_configs/studies/smoke.gin",
                                 f"--workdir={workdir}", "--size=tiny", "--no_progress"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=600)
    assert pretrained.returncode == 0, pretrained.stdout[-4000:] + pretrained.stderr[-4000:]
    result = subprocess.run([sys.executable, "-m", "study", "--gin_file=gin_configs/studies/smoke.gin",
                             f"--workdir={workdir}", "--no_progress"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "pretraining tiny_aligned" not in result.stdout  # found done
    print(f"smoke study: {seconds:.0f} s")  # timed, not asserted: performance belongs in bench/ (ARCHITECTURE.md)
    assert f"report: {workdir / 'report' / 'report.md'}" in result.stdout

    spec = load_spec(["gin_configs/studies/smoke.gin"])
    results = pd.read_csv(workdir / "report" / "results.csv")
    got = {(r.model_name, r.pretrain_corpus, r.pretrain_tokens, r.method, r.pet_size, r.finetune_examples, r.seed)
           for r in results.itertuples()}
    want = {(p.size, p.corpus, p.checkpoint_tokens, p.method, p.pet_size, p.finetune_examples, p.seed) for p in spec.grid()}
    assert len(results) == len(want) and got == want
    assert (results["status"] == "done").all() and results["test_log_ppl"].gt(0).all()
    assert results["bleu"].notna().all() and results["dev_ppl"].ge(1).all()
    # the runner's per-run lines, one per finished run
    assert sum(line.startswith("[") and "log-PPL" in line for line in result.stdout.splitlines()) == len(want)

    text = (workdir / "report" / "report.md").read_text()
    for title in SECTION_TITLES:
        assert f"## {title}" in text, title
    assert "This section failed" not in text, text
    assert "Trajectory analysis failed" not in text and "returned no text" not in text
    for png in ("df_scaling.png", "joint_fits.png", "scale_vs_data.png"):
        assert (workdir / "report" / png).stat().st_size > 1000, png
    assert "heldout_MAD" in text and "heldout_mad / naive" in text and " [" in text  # tables and intervals
    assert "## Finetuning protocol" in text and "fixed length: 1 epoch(s)" in text
    assert "**Model scaling vs pretraining-data scaling**" in text

    status = subprocess.run([sys.executable, "-m", "study", "status", f"--workdir={workdir}"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and f"done {len(want)}" in status.stdout and "failed 0" in status.stdout
