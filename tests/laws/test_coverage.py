"""Known truth: the bootstrap's 95% intervals cover the simulator's true parameters often enough."""
import numpy as np
import pytest

from laws import bootstrap_joint, fit_finetuning_results, simulate_study


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_truth_in_most_simulated_studies():
    """40 studies drawn from a known multiplicative law plus Normal noise per run; each is fitted
    (Zhang et al.'s procedure, largest size / Dp / Df held out) and bootstrapped over whole runs.
    A 95% interval should hold the truth in about 95% of studies; at least 85% is required of
    every shared and per-factor exponent and of E."""
    hits = {}
    for study in range(40):
        sim = simulate_study("multiplicative", methods=("fmt",), seed=100 + study)
        fits = fit_finetuning_results(sim.runs, y="y", forms=("multiplicative",))
        jf = fits.forms["fmt"]["multiplicative"]
        boot = bootstrap_joint(jf, fits.data["fmt"], runs=fits.runs["fmt"], n_resamples=100, seed=study)
        assert boot.unit == "run" and boot.usable(), boot.summary()
        for factor, result in boot.factors.items():
            intervals = result.intervals()
            for name in ("alpha", "beta", "E"):
                true = sim.truth["fmt"][factor][name]
                hits.setdefault((factor, name), []).append(intervals.loc[name, "lo"] <= true <= intervals.loc[name, "hi"])
    coverage = {key: float(np.mean(v)) for key, v in hits.items()}
    assert set(coverage) == {(f, p) for f in ("model_params", "pretrain_tokens") for p in ("alpha", "beta", "E")}
    assert min(coverage.values()) >= 0.85, coverage
