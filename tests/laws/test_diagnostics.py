"""Isik et al. diagnostics: extrapolation from the first k sizes; the misalignment signature."""
import numpy as np
import pytest

from laws import extrapolation_check, fit_law, misalignment_check

DP = np.geomspace(1e8, 1e11, 10)


def test_extrapolation_from_first_k_sizes_gets_better_with_k():
    rng = np.random.default_rng(0)
    ce = (1.3 + 80.0 / DP ** 0.25) * np.exp(rng.normal(0, 0.002, DP.size))
    table = extrapolation_check("isik_ce", DP, ce, ks=[5, 8])
    assert list(table["k"]) == [5, 8] and table["converged"].all()
    assert table["extrapolation_mad"].iloc[-1] < 0.02
    assert abs(table["alpha"].iloc[-1] - 0.25) < 0.05
    with pytest.raises(ValueError, match="k=10 must be between 1 and 9"):
        extrapolation_check("isik_ce", DP, ce, ks=[10])


def test_loglaw_fits_bleu_and_misalignment_is_flagged():
    rng = np.random.default_rng(1)
    ce = 1.3 + 80.0 / DP ** 0.25                            # improves monotonically
    bleu_aligned = np.log(0.01 * DP ** 0.35) ** 1.2 * np.exp(rng.normal(0, 0.003, DP.size))
    r = fit_law("isik_loglaw", DP, bleu_aligned)
    assert r.converged and r.fit_mad < 0.3
    ok = misalignment_check(DP, ce, bleu_aligned, tolerance=0.2)
    assert ok.ce_monotone and ok.metric_monotone and not ok.flagged
    bleu_misaligned = bleu_aligned.copy()
    bleu_misaligned[[4, 7]] -= 3.0                          # BLEU fluctuates while CE improves
    bad = misalignment_check(DP, ce, bleu_misaligned, tolerance=0.2)
    assert bad.flagged and len(bad.metric_drops) == 2 and "misalignment" in bad.message
    # Drops within the metric's own tolerance (its units) are noise, not the signature.
    assert not misalignment_check(DP, ce, bleu_misaligned, tolerance=0.0, metric_tolerance=3.5).flagged
    with pytest.raises(ValueError, match="metric_tolerance must be a finite number >= 0, got -1"):
        misalignment_check(DP, ce, bleu_aligned, metric_tolerance=-1)
    not_applicable = misalignment_check(DP, ce[::-1], bleu_misaligned)
    assert not not_applicable.flagged and "not monotone" in not_applicable.message
    with pytest.raises(ValueError, match="equal lengths"):
        misalignment_check(DP, ce[:-1], bleu_aligned)
