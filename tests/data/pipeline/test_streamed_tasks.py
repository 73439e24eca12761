"""Finetuning tasks too large for memory (the TFDS ones): sizes from metadata, nested Df subsets
drawn by example position while streaming, only small splits read whole, clear errors."""
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data import pipeline, tasks, tfds_tasks
from data.rows import finetune_lengths
from data.tasks import EXAMPLE_KEYS, StreamedSplits

SEQ_LEN = 64


@pytest.fixture(scope="module")
def streamed_task(texts, vocabulary):
    """A 300-example 'dataset' streamed like a TFDS one; counts how often each split is read."""
    reads = {"train": 0, "validation": 0, "test": 0}
    splits = {"train": texts[:300], "validation": texts[300:330], "test": texts[330:360]}

    def dataset(split):
        reads[split] += 1
        rows = [{"inputs": "copy: " + t[:60], "targets": t[:60], "source": t[:60], "reference": t[:60], "stratum": ""}
                for t in splits[split]]
        return tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows] for k in EXAMPLE_KEYS})

    name = tasks.register_streamed_finetune_task("test_streamed",
                                                 StreamedSplits(lambda split: len(splits[split]), dataset), vocabulary)
    return name, reads, splits


def _targets(batches, vocabulary):
    out = []
    for batch in batches:
        for row in range(batch["decoder_target_tokens"].shape[0]):
            seg = batch["decoder_segment_ids"][row]
            for s in np.unique(seg[seg > 0]):
                where = (seg == s) & (batch["decoder_loss_weights"][row] > 0)
                out.append(vocabulary.decode(batch["decoder_target_tokens"][row][where][:-1].tolist()))
    return out


def test_subsets_are_nested_position_draws_and_sizes_come_from_metadata(streamed_task, vocabulary):
    name, reads, splits = streamed_task
    before = dict(reads)
    assert tasks.split_size(name, "train") == 300 and reads == before  # counted without reading
    with pytest.raises(ValueError, match="is streamed"):
        tasks.finetune_subset(name, 20, 0)
    common = dict(subset_seed=3, batch_size=4, seq_len=SEQ_LEN, epochs=1, seed=0)
    small = set(_targets(pipeline.finetune_batches(name, finetune_examples=20, **common), vocabulary))
    large = set(_targets(pipeline.finetune_batches(name, finetune_examples=60, **common), vocabulary))
    assert len(small) == 20 and len(large) == 60 and small < large  # nested across Df
    expected = {splits["train"][i][:60] for i in tasks.subset_indices(300, 20, 3)}
    room = finetune_lengths(SEQ_LEN)["targets"] - 1  # targets are trimmed to their length, then EOS
    assert small == {vocabulary.decode(vocabulary.encode(t)[:room]) for t in expected}
    other = set(_targets(pipeline.finetune_batches(name, finetune_examples=20, **{**common, "subset_seed": 4}),
                         vocabulary))
    assert other != small
    assert len(tasks.raw_examples(name, "validation")) == 30  # small splits are read whole
    with pytest.raises(ValueError, match="train split has 300 examples; choose 1..300"):
        tasks.subset_indices(300, 301, 0)


def test_large_splits_are_never_read_into_memory(streamed_task, monkeypatch):
    name, _, _ = streamed_task
    monkeypatch.setattr(tasks, "SMALL_SPLIT_LIMIT", 100)
    with pytest.raises(ValueError, match="too many to read into memory"):
        tasks.STREAMED[name].read("train")


def test_tfds_tasks_are_finetuning_tasks_and_fail_clearly_without_data(monkeypatch):
    names = set(tasks.STREAMED)
    assert {"tfds_wmt14_en_de", "tfds_wmt14_de_en", "tfds_wmt19_en_zh", "tfds_wmt14_en_de_newstest2021",
            "tfds_mlsum_de", "tfds_cnn_dailymail_en", "tfds_flores200_en_de"} <= names
    assert tasks.split_size("tfds_wmt14_en_de", "train") == 4_508_785  # documented size, before preparing
    with pytest.raises(ValueError, match=r"TFDS dataset 'wmt19_translate/zh-en:1.0.0' is not prepared in \S+"):
        tasks.split_size("tfds_wmt19_en_zh", "train")
    with pytest.raises(ValueError, match="'tfds_flores200_en_de' has no 'train' split"):
        tasks.split_size("tfds_flores200_en_de", "train")
    broken = mock.Mock(side_effect=OSError("network unreachable"))
    monkeypatch.setattr(tfds_tasks.SACREBLEU_SETS["wmt21"], "source", broken)
    with pytest.raises(ValueError, match="test set wmt21 en-de is not available in .* network unreachable"):
        tasks.STREAMED["tfds_wmt14_en_de_newstest2021"].read("test")


def test_tfds_examples_map_to_the_task_format():
    spec = next(s for s in tfds_tasks.specs() if s.name == "tfds_wmt14_de_en")
    with tfds.testing.mock_data(num_examples=5), \
            mock.patch.object(tfds_tasks, "check_tfds_prepared", lambda name, data_dir=None: tfds.builder(name)):
        rows = list(spec.dataset("validation").as_numpy_iterator())
    assert len(rows) == 5 and set(rows[0]) == set(EXAMPLE_KEYS)
    assert rows[0]["inputs"].decode().startswith("translate German to English: ")
    assert rows[0]["reference"] == rows[0]["targets"]
