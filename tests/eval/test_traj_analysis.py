"""Trajectory analyses on synthetic scored sizes (no model): trend fractions and double descent
across sizes, the perplexity-vs-accuracy predictor comparison, plots; the OPT real-data check.
(The classifier itself on rising/falling/flat/noisy series is tested in test_trends.py.)"""
import numpy as np
import pytest

from eval import trajectory_analysis as analysis
from eval import trends
from eval.trajectory_data import SizeScores

CHECKPOINTS = 10


def synthetic_size(label, params, kinds, accuracy, scale=1.0, seed=0):
    """A SizeScores whose validation pairs follow planted ppl curves (one row of pairs per kind)."""
    rng = np.random.default_rng(seed)
    i = np.arange(CHECKPOINTS, dtype=float)
    curves = {"up": 5 * (1 + 0.05 * i), "down": 20 * np.exp(-0.1 * i) + 2, "flat": np.full(CHECKPOINTS, 6.0)}
    ppl = np.stack([curves[k] * scale * np.exp(rng.normal(0, 0.002, CHECKPOINTS)) for k in kinds])  # [pairs, C]
    lp = -np.log(ppl).T[:, None, :].astype(np.float32)  # [C, rows=1, pairs]
    steps = np.arange(1, CHECKPOINTS + 1) * 100
    return SizeScores(label=label, model=label, params=params, steps=steps, tokens=steps * 1000,
                      dev_loss=np.full(CHECKPOINTS, np.nan), log_probs={"validation": lp},
                      mc={"task": {"accuracy": np.asarray(accuracy, float)}})


def test_trend_fractions_and_double_descent_across_sizes(tmp_path):
    small = synthetic_size("s", 1_000, ["up", "up", "down", "flat"], np.linspace(0.2, 0.3, CHECKPOINTS))
    large = synthetic_size("l", 10_000, ["down", "up", "down", "flat"], np.linspace(0.3, 0.6, CHECKPOINTS), 0.5)
    summary = analysis.trend_summary({"s": small, "l": large}, trends.TrendConfig(start_fraction=0.3))
    assert summary.fractions["s"] == {"stagnated": 0.25, "upward": 0.5, "downward": 0.25, "other": 0.0}
    assert summary.fractions["l"]["downward"] == 0.5
    # Pair 0 rises in the small model and falls in the larger one; pair 1 rises in both.
    np.testing.assert_array_equal(summary.double_descent["s -> larger sizes"], [True, False, False, False])
    assert not summary.errors
    np.testing.assert_allclose(summary.means["s"]["stagnated"], 6.0, rtol=0.01)
    paths = analysis.plot_trends({"s": small, "l": large}, summary, tmp_path)
    assert [p.name for p in paths] == ["trends_vs_ppl.png", "trends_vs_tokens.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_too_few_checkpoints_is_reported_not_raised():
    short = synthetic_size("s", 1_000, ["up"], np.zeros(CHECKPOINTS))
    short.log_probs["validation"] = short.log_probs["validation"][:3]
    short.steps, short.tokens = short.steps[:3], short.tokens[:3]
    summary = analysis.trend_summary({"s": short}, trends.TrendConfig(start_fraction=0.9))
    assert summary.errors["s"].startswith("too short to classify") and "s" not in summary.fractions


def test_perplexity_predicts_accuracy_better_than_flops(tmp_path):
    # Accuracy is a function of validation ppl; every size spends the same FLOPs per checkpoint
    # (smaller ones see more tokens) but larger ones reach lower ppl with them.
    sizes = {}
    for label, params, scale in (("s", 1_000, 1.0), ("m", 4_000, 0.6), ("l", 16_000, 0.35)):
        size = synthetic_size(label, params, ["down"], np.zeros(CHECKPOINTS), scale)
        size.tokens = size.tokens * (16_000 // params)
        size.mc["task"]["accuracy"] = 1.0 - 0.1 * np.log(size.ppl("validation"))
        sizes[label] = size
    points = analysis.accuracy_points(sizes, "task")
    assert points["accuracy"].shape == (3 * CHECKPOINTS,)
    np.testing.assert_allclose(points["flops"][:CHECKPOINTS], 6 * 1_000 * sizes["s"].tokens)
    quality = analysis.predictor_quality(points)
    assert quality["validation ppl"]["spearman"] == pytest.approx(1.0)
    assert quality["validation ppl"]["r2"] == pytest.approx(1.0)
    assert quality["training FLOPs"]["r2"] < 0.8 and quality["model size"]["r2"] < 0.8
    assert quality["tokens seen"]["spearman"] < quality["validation ppl"]["spearman"]
    path = analysis.plot_accuracy({"task": points, "again": points}, tmp_path / "acc.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no size has multiple-choice results"):
        analysis.accuracy_points(sizes, "missing")


def test_analysis_modules_import_without_the_training_stack():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, eval.trajectory_data, eval.trajectory_analysis, study.trajectories.opt_check\n"
            "heavy = [m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
