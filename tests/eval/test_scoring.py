"""score_batches / token_log_probs equal a direct numpy log-softmax over target tokens only,
for a base model and a LoRA + soft-prompt model, and one compiled program serves repeated calls."""
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from data import pipeline
from data.rows import BATCH_KEYS
from eval import evaluate, scoring
from eval.metrics import token_log_probs_from_logits

sys.path.insert(0, str(Path(__file__).parent))
from random_models import random_model  # noqa: E402

SEQ_LEN, BATCH = 64, 4


EXAMPLES = 8


@pytest.fixture(scope="module")
def view():
    return evaluate.eval_view("mt_en_de", max_examples=EXAMPLES)


@pytest.fixture(scope="module")
def batches(view):
    """The packed dev/test batches finetuning scores (data.pipeline), of the first 8 test examples."""
    return pipeline.eval_batches(view, "test", batch_size=BATCH, seq_len=SEQ_LEN)


def _model(kind: str, seed: int = 0) -> nnx.Module:
    if kind == "base":
        return random_model(seed=seed)
    return random_model(lora_rank=2, prompt_length=5, seed=seed)  # LoRA and a soft prompt at once


_forward = nnx.jit(lambda model, batch: model(
    batch["decoder_input_tokens"], segment_ids=batch["decoder_segment_ids"],
    positions=batch["decoder_positions"], causal_attention=batch["decoder_causal_attention"]))


def _numpy_reference(model, batch):
    logits = _forward(model, batch)  # the model's own forward, a separate program from scoring's
    log_probs = token_log_probs_from_logits(np.asarray(logits, np.float64), batch["decoder_target_tokens"])
    weights = batch["decoder_loss_weights"].astype(np.float64)
    return log_probs, weights


@pytest.mark.parametrize("kind", ["base", "lora_prompt"])
def test_score_batches_equals_numpy_log_softmax_on_target_tokens(kind, batches):
    model = _model(kind)
    total, weight = 0.0, 0.0
    for batch in batches:
        log_probs, weights = _numpy_reference(model, batch)
        np.testing.assert_allclose(scoring.token_log_probs(model, batch), log_probs, atol=2e-5)
        total += float((log_probs * weights).sum())
        weight += float(weights.sum())
        sums, counts = scoring.sequence_log_likelihoods(model, batch)
        np.testing.assert_allclose(sums, (log_probs * weights).sum(-1), rtol=1e-5)
        np.testing.assert_array_equal(counts, weights.sum(-1))
    got = scoring.score_batches(model, batches)
    assert got.total_weight == weight > 0
    # Only target tokens count: far fewer than all non-padding positions.
    assert weight < sum(float((b["decoder_segment_ids"] > 0).sum()) for b in batches)
    assert got.mean_log_likelihood == pytest.approx(total / weight, rel=1e-5)
    assert got.ppl == pytest.approx(np.exp(-total / weight), rel=1e-4)


def test_score_batches_compiles_once_per_model_structure(batches):
    scoring.score_batches(_model("base"), batches)
    before = scoring._batch_sums._cache_size()
    other = _model("base", seed=7)  # same structure, new weights
    first, second = scoring.score_batches(_model("base"), batches), scoring.score_batches(other, batches)
    assert scoring._batch_sums._cache_size() == before
    assert first.total_log_likelihood != second.total_log_likelihood


def test_score_batches_rejects_bad_batches(batches):
    model = _model("base")
    with pytest.raises(ValueError, match="no batches"):
        scoring.score_batches(model, [])
    with pytest.raises(ValueError, match="lacks"):
        scoring.score_batches(model, [{"decoder_input_tokens": batches[0]["decoder_input_tokens"]}])
    small = random_model(vocab_size=100)
    with pytest.raises(ValueError, match="vocabulary has 100 entries"):
        scoring.score_batches(small, batches)


def test_unpacked_rows_of_evaluate_match_the_packed_pipeline_batches(view, batches):
    rows = evaluate.likelihood_batches(view, "test", batch_size=BATCH, seq_len=SEQ_LEN)
    assert len(rows) == 2 and sum(int(r["decoder_segment_ids"][:, 0].sum()) for r in rows) == EXAMPLES
    packed = batches[0]
    first = int((packed["decoder_segment_ids"][0] == 1).sum())  # example 0 is segment 1 of packed row 0
    for key in BATCH_KEYS:
        np.testing.assert_array_equal(rows[0][key][0, :first], packed[key][0, :first], err_msg=key)
        assert not rows[0][key][0, first:].any(), key
    model = _model("base")
    unpacked, packed_score = scoring.score_batches(model, rows), scoring.score_batches(model, batches)
    assert unpacked.total_weight == packed_score.total_weight
    assert unpacked.total_log_likelihood == pytest.approx(packed_score.total_log_likelihood, rel=1e-5)
    result = evaluate.evaluate_task(model, "mt_en_de", max_examples=EXAMPLES, decode=False,
                                    batch_size=BATCH, seq_len=SEQ_LEN)
    assert result["log_ppl"] == pytest.approx(packed_score.log_ppl, rel=1e-5)
