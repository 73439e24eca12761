"""data.rows / data.finetune_rows build the same prefix-LM rows as seqio's PrefixLMFeatureConverter
(from cached ids instead of a tf.data pipeline per run), and the same nested Df subsets."""
import numpy as np
import pytest
import seqio

from data import finetune_rows, rows, tasks
from data.pipeline import examples_dataset
from data.rows import BATCH_KEYS, finetune_lengths

TASK, SEQ_LEN, N = "mt_en_de", 64, 24


@pytest.fixture(scope="module")
def seqio_rows():
    """seqio's unpacked prefix-LM features of the first N validation examples."""
    examples = examples_dataset(TASK, split="validation", sequence_length=finetune_lengths(SEQ_LEN, 0.5),
                                seed=0, shuffle=False, num_epochs=1).take(N)
    converter = seqio.PrefixLMFeatureConverter(pack=False)
    features = converter(examples, {"inputs": SEQ_LEN // 2, "targets": SEQ_LEN // 2})
    return list(features.as_numpy_iterator())


def test_unpacked_rows_equal_seqio_prefix_lm_features(seqio_rows):
    encoded = finetune_rows.encode_examples(TASK, tasks.raw_examples(TASK, "validation")[:N], seq_len=SEQ_LEN)
    built = rows.batches(encoded, batch_size=N, seq_len=SEQ_LEN, pack=False)
    assert len(built) == 1
    for i, expected in enumerate(seqio_rows):
        length = int((built[0]["decoder_segment_ids"][i] > 0).sum())  # beyond it both are padding
        assert length == int((expected["decoder_target_tokens"] > 0).sum())
        for key in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                    "decoder_causal_attention"):
            np.testing.assert_array_equal(built[0][key][i][:length], expected[key][:length], err_msg=f"{key} row {i}")


def test_packing_keeps_every_segment_intact():
    encoded = finetune_rows.encode_examples(TASK, tasks.raw_examples(TASK, "validation")[:N], seq_len=SEQ_LEN)
    single = rows.batches(encoded, batch_size=N, seq_len=SEQ_LEN, pack=False)[0]
    packed = rows.batches(encoded, batch_size=4, seq_len=SEQ_LEN)
    segments = []
    for batch in packed:
        assert set(batch) == set(BATCH_KEYS)
        for r in range(4):
            for s in range(1, batch["decoder_segment_ids"][r].max() + 1):
                where = batch["decoder_segment_ids"][r] == s
                segments.append({k: batch[k][r][where] for k in BATCH_KEYS})
    assert len(segments) == N and sum(b["decoder_segment_ids"].max(axis=1).sum() for b in packed) == N
    for i, segment in enumerate(segments):  # each packed segment is its unpacked row, shifted
        length = int((single["decoder_segment_ids"][i] > 0).sum())
        for key in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                    "decoder_causal_attention", "decoder_positions"):
            np.testing.assert_array_equal(segment[key], single[key][i][:length], err_msg=f"{key} {i}")


def test_finetune_batches_cover_the_nested_subset_each_epoch():
    subset = tasks.finetune_subset(TASK, 40, subset_seed=3)
    wanted = sorted(t.tolist() for _, t in finetune_rows.encode_examples(TASK, subset, seq_len=SEQ_LEN))
    batches = list(finetune_rows.finetune_batches(TASK, finetune_examples=40, subset_seed=3, batch_size=4,
                                         seq_len=SEQ_LEN, epochs=2, seed=0))
    targets = []
    for batch in batches:
        for r in range(4):
            ids, seg = batch["decoder_target_tokens"][r], batch["decoder_segment_ids"][r]
            weights = batch["decoder_loss_weights"][r]
            for s in range(1, seg.max() + 1):
                targets.append(ids[(seg == s) & (weights > 0)].tolist())
    assert sorted(targets) == sorted(wanted + wanted)
    with pytest.raises(ValueError, match="finetune_examples"):
        next(finetune_rows.finetune_batches(TASK, finetune_examples=10**7, subset_seed=0, batch_size=4,
                                   seq_len=SEQ_LEN, epochs=1))
