"""Pretraining data at scale: plain text files by glob and TFDS datasets (mocked: no download)
become UL2 batches with the same format, sharding by file, O(1) resume and clear errors."""
from unittest import mock

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from data import text_corpora, vocab
from train.data_source import TextCorpusBatches

TWO_DENOISERS = {"r_3_15": 1.0, "s_prefix": 1.0}  # the mechanics of the full mix at a fraction of the cost


@pytest.fixture(scope="module")
def text_files(texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(4):
        (root / f"train-{i}.txt").write_text("\n".join(texts[i::5]) + "\n")
    (root / "valid-0.txt").write_text("\n".join(texts[4::5]) + "\n")
    return {"train": str(root / "train-*.txt"), "validation": str(root / "valid-*.txt")}


def _source(text_files, vocabulary, **kwargs):
    return TextCorpusBatches(batch_size=4, seq_len=128, seed=0, files=text_files, denoiser_rates=TWO_DENOISERS,
                             vocabulary=vocabulary.sentencepiece_model_file, **kwargs)


def test_text_files_make_resumable_sharded_batches(text_files, vocabulary, tmp_path):
    source = _source(text_files, vocabulary)
    assert source.vocab_size == vocabulary.vocab_size and source.description["files"] == text_files
    run = source(0)
    first = [next(run) for _ in range(3)]
    assert all(b["decoder_target_tokens"].shape == (4, 128) and (b["decoder_loss_weights"] > 0).any() for b in first)
    run.save(tmp_path / "position")
    rest = [next(run) for _ in range(2)]
    resumed = source(3, state=tmp_path / "position")
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(rest, [next(resumed) for _ in range(2)]) for k in a)
    assert len(source.dev_batches(1)) == 1
    shards = [_source(text_files, vocabulary, shard_index=i, num_shards=2)(0) for i in range(2)]
    a, b = next(shards[0]), next(shards[1])
    assert a["decoder_target_tokens"].shape == (2, 128) and not np.array_equal(a["decoder_target_tokens"],
                                                                                b["decoder_target_tokens"])


def test_tfds_corpus_batches_with_mocked_data(vocabulary):
    with tfds.testing.mock_data(num_examples=40), mock.patch.object(text_corpora, "check_tfds_prepared",
                                                                      lambda *args: None):
        source = TextCorpusBatches(batch_size=2, seq_len=64, seed=0, tfds=[{"name": "c4/en:3.1.0"}],
                                   vocabulary=vocabulary.sentencepiece_model_file, denoiser_rates=TWO_DENOISERS)
        batch = next(source(0))
    assert source.description["tfds"] == [{"name": "c4/en:3.1.0"}]
    assert batch["decoder_target_tokens"].shape == (2, 64) and (batch["decoder_segment_ids"] > 0).mean() > 0.5


def test_bad_sources_fail_naming_what_is_wrong(text_files, vocabulary, tmp_path):
    with pytest.raises(ValueError, match=r"TFDS dataset 'c4/en:3.1.0' is not prepared in .*nodata"):
        text_corpora.register_tfds_corpora([{"name": "c4/en:3.1.0"}], vocabulary.sentencepiece_model_file,
                                           data_dir=str(tmp_path / "nodata"))
    with pytest.raises(ValueError, match="vocabulary .*missing.model does not exist; train one"):
        text_corpora.register_text_files(text_files, tmp_path / "missing.model")
    with pytest.raises(ValueError, match=r"no train text files match '.*nothing-\*.txt'"):
        text_corpora.register_text_files({**text_files, "train": str(tmp_path / "nothing-*.txt")},
                                         vocabulary.sentencepiece_model_file)
    with pytest.raises(ValueError, match="exactly one of TextCorpusBatches.tfds"):
        TextCorpusBatches(batch_size=4, seq_len=64, seed=0, vocabulary="x")


def test_vocab_cli_trains_on_text_files(text_files, tmp_path, capsys):
    out = tmp_path / "own.model"
    assert vocab.main(["train", f"--text_files={text_files['train']}", f"--out={out}", "--vocab_size=1000"]) == 0
    voc = seqio.SentencePieceVocabulary(str(out), extra_ids=100)
    assert voc.vocab_size == 1000 and voc.tokenizer.piece_to_id("[S2S]") != voc.tokenizer.unk_id()
    assert vocab.main(["train", f"--text_files={tmp_path / 'none-*.txt'}", f"--out={out}"]) == 2
    assert "no text files match" in capsys.readouterr().err
