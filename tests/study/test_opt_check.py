"""The trajectory analysis checked on real data: the bundled OPT validation-perplexity trajectories."""
import pytest

from study.trajectories.opt_check import opt_fits, opt_section


def test_opt_real_data_check_fits(tmp_path):
    fits, curves = opt_fits(sizes=["125m", "175b"])
    assert set(fits) == {"125m", "175b"}
    for size, fit in fits.items():
        tokens, ppl = curves[size]
        assert fit["converged"] and fit["beta"] > 0 and 1 < fit["E"] < ppl.min()
        assert fit["heldout_mad"] < 0.05 * ppl[-1]  # the held-out last checkpoint is predicted within 5%
    assert fits["175b"]["E"] < fits["125m"]["E"]  # the larger model's floor is lower
    with pytest.raises(ValueError, match="unknown OPT sizes"):
        opt_fits(sizes=["7b"])
    markdown = opt_section(tmp_path, sizes=["125m"])
    assert "| 125m |" in markdown and (tmp_path / "opt_trajectories.png").exists()
