"""The report's Isik alignment check on BLEU: drops below sacrebleu's reporting precision are not
the misalignment signature, and BLEU near zero at every Dp is not judged (nor counted as a finding)."""
import pandas as pd

from study.report.findings import alignment
from study.report.fits import alignment_fits
from study.spec import StudySpec

DP = [2048, 4096, 8192, 16384]


def spec():
    return StudySpec(sizes=("tiny",), pretrain_corpora=("aligned", "misaligned"), pretrain_gin="gin_configs/pretrain/smoke.gin",
                     token_budget=16384, checkpoint_tokens=tuple(DP), dp_sweep_sizes=("tiny",), methods=("fmt",),
                     finetune_examples=(16, 64), seeds=(0,))


def frame(bleu_by_corpus):
    rows = []
    for corpus, bleu in bleu_by_corpus.items():
        for dp, value in zip(DP, bleu):
            rows.append(dict(size="tiny", corpus=corpus, method="fmt", finetune_examples=64, pet_size=0,
                             pretrain_tokens=dp, test_log_ppl=2.0 + 100.0 / dp ** 0.5, bleu=value))
    return pd.DataFrame(rows)


def test_bleu_drops_below_reporting_precision_are_not_the_signature():
    fits = {f.corpus: f for f in alignment_fits(frame({"aligned": [10.0, 12.0, 11.96, 14.0],
                                                        "misaligned": [10.0, 12.0, 9.0, 14.0]}), spec())}
    assert fits["aligned"].monotonicity.startswith("metric and cross-entropy both improve")
    assert fits["misaligned"].monotonicity.startswith("misalignment signature")
    assert "drop 3" in fits["misaligned"].monotonicity


def test_bleu_near_zero_everywhere_is_not_judged_nor_counted():
    fits = alignment_fits(frame({"aligned": [0.1, 0.4, 0.2, 0.5], "misaligned": [12.0, 13.0, 14.0, 15.0]}), spec())
    by_corpus = {f.corpus: f for f in fits}
    assert by_corpus["aligned"].monotonicity.startswith("not judged: BLEU is below 1 at every Dp (max 0.50)")
    text = alignment(fits)
    assert "Aligned runs: not testable here" in text  # the unjudged aligned run is neither agreement nor not
    assert "tiny/misaligned: metric and cross-entropy both improve monotonically with Dp (seed noise: CE 0, BLEU 0.1) " \
           "(the paper's misalignment effect does not show here)" in text


def test_aligned_vs_misaligned_cross_entropy_is_compared_cell_by_cell():
    rows = frame({"aligned": [10.0, 12.0, 13.0, 14.0], "misaligned": [10.0, 12.0, 13.0, 14.0]})
    rows.loc[rows["corpus"] == "misaligned", "test_log_ppl"] += [0.01, 0.05, -0.02, 0.2]
    text = alignment(alignment_fits(rows, spec()))
    assert "aligned pretraining gives the lower CE in 3 of 4 cells (mixed (3 agree, 1 disagree)" in text
    assert "tiny +0.010 at Dp 2,048 -> +0.200 at 16,384" in text


def test_seed_noise_sets_the_tolerance_the_laws_extrapolate_and_scratch_is_the_baseline():
    """Two seeds whose BLEU differs by 4 points: a 3-point drop is within seed noise, not the signature.
    The CE law is fitted on the first two Dp values' runs and scored on the rest; the from-scratch
    rows (pretrain_tokens 0) are the baseline, never a fit point."""
    rows = []
    for seed, shift in ((0, 0.0), (1, 4.0)):
        part = frame({"misaligned": [10.0 + shift, 12.0 + shift, 9.0 + shift, 14.0 + shift]}).assign(seed=seed)
        part["test_log_ppl"] += 0.01 * seed
        rows.append(part)
    scratch = frame({"misaligned": [1.0]}).iloc[:1].assign(pretrain_tokens=0, test_log_ppl=5.0, bleu=0.5, seed=0)
    data = pd.concat(rows + [scratch], ignore_index=True)
    data["scratch"] = data["pretrain_tokens"] == 0
    fit = alignment_fits(data, StudySpec(**{**spec().__dict__, "isik_fit_points": 3}))[0]
    assert fit.monotonicity.startswith("metric and cross-entropy both improve monotonically") and "BLEU 4" in fit.monotonicity
    assert fit.fit_dp == (2048.0, 4096.0, 8192.0) and fit.ce_fit.n_heldout == 1
    assert fit.ce_fit.heldout_mad < fit.ce_fit.heldout_naive_mad      # the law extrapolates better than "no change"
    assert fit.scratch == {"ce": 5.0, "bleu": 0.5} and 0 not in set(fit.points["pretrain_tokens"])
    assert "pretrained CE at the largest Dp vs from scratch: tiny/misaligned" in alignment([fit])
