"""Trend classifier (Xia et al.) on synthetic series with known trends; OLS equals scipy's linregress."""
import numpy as np
import pytest
from scipy import stats

from eval import trends
from eval.trends import TrendConfig, classify_trends

CHECKPOINTS = 20


def synthetic(n, kind, rng):
    i = np.arange(CHECKPOINTS)
    if kind == "rising":
        base = 10 * (1 + 0.03 * i)
        noise = rng.normal(0, 0.01, (n, CHECKPOINTS))
    elif kind == "falling":
        base = 10 * np.exp(-0.04 * i)
        noise = rng.normal(0, 0.01, (n, CHECKPOINTS))
    elif kind == "flat":
        return np.full((n, CHECKPOINTS), 7.0)
    elif kind == "noisy_flat":
        base = np.full(CHECKPOINTS, 7.0)
        noise = rng.normal(0, 0.01, (n, CHECKPOINTS))
    elif kind == "wild":  # big swings, no trend: neither a trend nor stagnated
        base = np.full(CHECKPOINTS, 7.0)
        noise = rng.normal(0, 0.6, (n, CHECKPOINTS))
    return base * np.exp(noise)


def test_classifier_recovers_known_trends():
    rng = np.random.default_rng(0)
    kinds = ["rising", "falling", "flat", "noisy_flat", "wild"]
    ppl = np.concatenate([synthetic(1000, k, rng) for k in kinds])
    result = classify_trends(ppl)
    labels = result.labels.reshape(len(kinds), 1000)
    frac = lambda row, cls: float(np.mean(labels[row] == trends.CLASSES.index(cls)))
    assert frac(0, "upward") == 1.0
    assert frac(1, "downward") == 1.0
    assert frac(2, "stagnated") == 1.0
    # Noisy flat: a 5%-level test calls ~5% of trendless series trends by chance, no more.
    assert frac(3, "stagnated") > 0.9
    assert 0.01 < frac(3, "upward") + frac(3, "downward") < 0.09
    assert frac(4, "other") > 0.7
    fractions = result.fractions()
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert fractions["upward"] == pytest.approx((1000 + labels[1:].__eq__(trends.UPWARD).sum()) / 5000)


def test_ols_equals_linregress_including_nans_and_log_steps():
    rng = np.random.default_rng(1)
    y = rng.lognormal(2, 0.3, (50, 9))
    x = np.log(np.array([100, 200, 400, 800, 1000, 1500, 2000, 3000, 4000.0]))
    y[3, [1, 5]] = np.nan
    slope, intercept, p = trends.ols_slopes(y, x)
    for row in range(len(y)):
        ok = np.isfinite(y[row])
        ref = stats.linregress(x[ok], y[row, ok])
        assert slope[row] == pytest.approx(ref.slope, rel=1e-9)
        assert intercept[row] == pytest.approx(ref.intercept, rel=1e-9)
        assert p[row] == pytest.approx(ref.pvalue, rel=1e-7)


def test_regressor_choice_and_normalisation():
    steps = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512], dtype=float)
    ppl = np.array([20 - 2 * np.log(steps)])  # linear in log(step), convex in index
    by_log = classify_trends(ppl, steps, TrendConfig(start_fraction=0.0, regressor="log_step"))
    # Normalised by the first ppl of the window (ppl_i / ppl_j): slope -2/20 per log-step, exactly.
    assert by_log.slope[0] == pytest.approx(-0.1)
    assert by_log.p_value[0] == 0.0 and by_log.labels[0] == trends.DOWNWARD
    raw = classify_trends(ppl, steps, TrendConfig(start_fraction=0.0, regressor="log_step", normalize=False))
    assert raw.slope[0] == pytest.approx(-2.0)
    # By index the window is chosen in steps too: 0.3 * 512 is nearest to checkpoint 128 (index 7).
    assert trends.window_indices(10, steps, 0.3) == (7, 10)
    assert trends.window_indices(10, None, 0.3) == (2, 10)  # evenly spaced: 0.3 * 10 -> 3rd checkpoint
    # Without steps the checkpoints count as evenly spaced (1..n), as the authors' analysis assumes.
    even = classify_trends(ppl, None, TrendConfig(start_fraction=0.0))
    assert even.slope[0] == pytest.approx(classify_trends(ppl, np.arange(1.0, 11.0), TrendConfig(start_fraction=0.0)).slope[0])


def test_double_descent_across_sizes_and_within_a_model():
    i = np.arange(CHECKPOINTS, dtype=float)
    down_up = 10 * np.exp(-0.2 * i) + 0.1 * np.maximum(i - 8, 0) ** 2 + 3  # descends, then rises
    down = 10 * np.exp(-0.2 * i) + 2
    up_then_down = np.where(i < 12, 5 + 0.3 * i, 5 + 0.3 * 11 - 0.4 * (i - 11))
    small = classify_trends(np.stack([down_up, down_up, down]), config=TrendConfig(start_fraction=0.5))
    large = classify_trends(np.stack([down, down_up, down]), config=TrendConfig(start_fraction=0.5))
    assert list(small.labels) == [trends.UPWARD, trends.UPWARD, trends.DOWNWARD]
    mask = trends.double_descent_mask(small, [large])
    assert list(mask) == [True, False, False]  # series 1 keeps rising in the large model too
    early = classify_trends(up_then_down[None], config=TrendConfig(start_fraction=0.2, end_fraction=0.55))
    late = classify_trends(up_then_down[None], config=TrendConfig(start_fraction=0.6))
    assert trends.double_descent_mask(early, [late])[0]
    with pytest.raises(ValueError, match="not the same tokens"):
        trends.double_descent_mask(small, [early])


def test_stagnation_needs_the_band_and_the_variance_condition():
    """The authors' stagnation: geometric mean within 0.95-1.05 of the first and last ppl AND variance
    below it. A series that swings widely between equal ends passes the band but not the variance."""
    swing = np.tile([30.0, 50.0, 10.0, 45.0, 12.0, 48.0, 15.0, 30.0], (1, 1))
    steady = np.tile([30.0, 30.5, 29.6, 30.2, 29.9, 30.3, 29.8, 30.0], (1, 1))
    result = classify_trends(np.concatenate([swing, steady]), config=TrendConfig(start_fraction=0.0))
    assert list(result.labels) == [trends.OTHER, trends.STAGNATED]


def test_mean_trajectories_and_plot(tmp_path):
    rng = np.random.default_rng(2)
    ppl = np.concatenate([synthetic(10, "rising", rng), synthetic(10, "flat", rng)])
    result = classify_trends(ppl)
    means = trends.mean_trajectories(ppl, result)
    np.testing.assert_allclose(means["upward"], np.exp(np.log(ppl[:10]).mean(0)))
    np.testing.assert_allclose(means["stagnated"], 7.0)
    assert np.all(np.isnan(means["downward"]))
    fractions = trends.trend_fractions({"xs": result, "s": result})
    assert fractions["xs"]["upward"] == 0.5 and fractions["xs"]["stagnated"] == 0.5
    valid_ppl = np.linspace(300, 30, CHECKPOINTS)
    path = trends.plot_mean_trajectories({"xs": means}, {"xs": valid_ppl}, tmp_path / "plots" / "traj.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input():
    with pytest.raises(ValueError, match="start_fraction"):
        TrendConfig(start_fraction=0.9, end_fraction=0.5)
    with pytest.raises(ValueError, match="regressor"):
        TrendConfig(regressor="step")
    with pytest.raises(trends.WindowTooShort, match="too short to classify.*holds 3 checkpoint.*at least 4"):
        classify_trends(np.ones((2, 10)), config=TrendConfig(start_fraction=0.8))
    with pytest.raises(ValueError, match="> 0"):
        classify_trends(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="strictly increasing"):
        classify_trends(np.ones((2, 5)), steps=[1, 2, 2, 3, 4])
    with pytest.raises(ValueError, match="unknown trend class"):
        classify_trends(np.ones((2, 10))).mask("flat")
