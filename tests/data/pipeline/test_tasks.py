"""Task and mixture registration, nested finetuning subsets, stratified ratios, TFDS names."""
import os
from collections import Counter

import numpy as np
import pytest
import seqio

from data import tasks, tfds_tasks, ul2


def test_default_offline_tasks_and_ul2_mixtures_are_registered():
    for pair in ("en_de", "en_zh"):
        for corpus in ("aligned", "misaligned"):
            mixture = seqio.get_mixture_or_task(f"ul2_{pair}_{corpus}")
            assert isinstance(mixture, seqio.Mixture)
            names = {t.name for t in mixture.tasks}
            assert names == {f"ul2_{pair}_{corpus}_{d}" for d in ul2.DENOISERS}
            s_task = seqio.get_mixture_or_task(f"ul2_{pair}_{corpus}_s_prefix")
            assert mixture.get_rate(s_task) / mixture.total_rate == pytest.approx(0.2)
        assert f"summarize_{pair}" in seqio.TaskRegistry.names()
    for name in ("mt_en_de", "mt_de_en", "mt_en_zh", "mt_zh_en"):
        assert name in seqio.TaskRegistry.names()


def test_blend_mixture_rates_and_custom_denoiser_rates():
    name = tasks.pretraining_mixture("en-de", {"aligned": 0.7, "misaligned": 0.3})
    mixture = seqio.get_mixture_or_task(name)
    aligned = sum(mixture.get_rate(t) for t in mixture.tasks if "_aligned_" in t.name)
    assert aligned / mixture.total_rate == pytest.approx(0.7)
    custom = tasks.pretraining_mixture("en-zh", "misaligned", {"s_prefix": 1.0, "r_3_15": 3.0})
    mixture = seqio.get_mixture_or_task(custom)
    assert {t.name for t in mixture.tasks} == {"ul2_en_zh_misaligned_s_prefix", "ul2_en_zh_misaligned_r_3_15"}
    s_task = seqio.get_mixture_or_task("ul2_en_zh_misaligned_s_prefix")
    assert mixture.get_rate(s_task) / mixture.total_rate == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown corpora"):
        tasks.pretraining_mixture("en-de", {"web": 1.0})
    with pytest.raises(ValueError, match="unknown language pair"):
        tasks.pretraining_mixture("en-fr")


def test_mt_prefixes():
    assert tasks.mt_prefix("en", "de") == "translate English to German: "
    assert tasks.mt_prefix("zh", "en") == "translate Chinese to English: "


def test_finetune_subsets_are_nested_and_seeded(mt_task):
    def ids(df, seed):
        return [e["source"] for e in tasks.finetune_subset("test_mt", df, seed)]

    for seed in (0, 1, 2):
        small, large, full = ids(20, seed), ids(100, seed), ids(300, seed)
        assert set(small) < set(large) < set(full) and len(set(large)) == 100
    assert set(ids(50, 0)) != set(ids(50, 1))
    assert ids(50, 0) == ids(50, 0)


def test_finetune_subset_size_errors(mt_task):
    with pytest.raises(ValueError, match="train split has 300 examples"):
        tasks.finetune_subset("test_mt", 301, 0)
    with pytest.raises(ValueError, match="finetune_examples=0"):
        tasks.finetune_subset("test_mt", 0, 0)
    with pytest.raises(ValueError, match="unknown finetuning task"):
        tasks.finetune_subset("no_such_task", 10, 0)


def test_stratum_ratio_is_preserved_by_every_subset(mt_task):
    # test_mt is 3:1 software:everyday; every Df keeps that ratio (within one example).
    for df in (4, 8, 40, 101, 300):
        counts = Counter(e["stratum"] for e in tasks.finetune_subset("test_mt", df, 0))
        assert abs(counts["everyday"] - df / 4) <= 1, (df, counts)


def test_summarization_language_mix_is_preserved():
    langs = ["de"] * 500 + ["en"] * 300 + ["fr"] * 150 + ["zh"] * 50
    order = tasks.nested_subset_order(langs, subset_seed=4)
    assert sorted(order.tolist()) == list(range(len(langs)))
    share = {"de": 0.5, "en": 0.3, "fr": 0.15, "zh": 0.05}
    chosen = np.asarray(langs)[order]
    for df in range(1, len(langs) + 1):
        counts = Counter(chosen[:df].tolist())
        for lang, p in share.items():
            assert abs(counts[lang] - p * df) < 1.0 + 1e-9, (df, lang, counts)
    other = tasks.nested_subset_order(langs, subset_seed=5)
    assert set(order[:100].tolist()) != set(other[:100].tolist())


def test_raw_examples_carry_source_and_reference(mt_task):
    raw = tasks.raw_examples("test_mt", "test")
    assert raw and all(r["inputs"] == "translate English to German: " + r["source"] for r in raw)
    assert all(r["reference"] == " ".join(r["source"].split()[::-1]) for r in raw)


def test_tfds_tasks_registered_under_their_names():
    expected = {
        "tfds_wmt14_en_de": "wmt14_translate/de-en:1.0.0",
        "tfds_wmt14_de_en": "wmt14_translate/de-en:1.0.0",
        "tfds_wmt19_en_zh": "wmt19_translate/zh-en:1.0.0",
        "tfds_wmt19_zh_en": "wmt19_translate/zh-en:1.0.0",
        "tfds_flores200_en_de": "huggingface:facebook__flores/eng_Latn-deu_Latn",
        "tfds_flores200_zh_en": "huggingface:facebook__flores/eng_Latn-zho_Hans",
        "tfds_mlsum_de": "huggingface:mlsum/de",
        "tfds_mlsum_es": "huggingface:mlsum/es",
        "tfds_mlsum_fr": "huggingface:mlsum/fr",
        "tfds_cnn_dailymail_en": "cnn_dailymail:3.4.0",
    }
    specs = {spec.name: spec for spec in tfds_tasks.specs()}
    for name, tfds_name in expected.items():
        task = seqio.get_mixture_or_task(name)
        assert specs[name].tfds_name == tfds_name and name in tasks.STREAMED  # a streamed finetuning task
        assert set(task.output_features) == {"inputs", "targets"}
    summaries = seqio.get_mixture_or_task("tfds_summarization")
    assert {t.name for t in summaries.tasks} == {n for n in expected if "mlsum" in n or "cnn" in n}


def test_missing_vocabulary_gives_clear_error(tmp_path, texts):
    from data import pipeline

    missing = seqio.SentencePieceVocabulary(str(tmp_path / "absent.model"), extra_ids=100)
    tasks.register_ul2_tasks("test_missing_vocab", lambda: texts, missing, denoisers=["s_prefix"])
    with pytest.raises(FileNotFoundError, match="python -m data.vocab train"):
        pipeline.pretrain_batches("test_missing_vocab_s_prefix", batch_size=2, seq_len=64, seed=0)


def test_real_tasks_on_the_committed_snapshot():
    """The offline MT and summarization tasks on the committed corpora snapshot."""
    raw = tasks.raw_examples("mt_de_en", "validation")
    assert raw and raw[0]["inputs"].startswith("translate German to English: ")
    train = tasks.raw_examples("mt_en_de", "train")
    with pytest.raises(ValueError, match=f"train split has {len(train)} examples"):
        tasks.finetune_subset("mt_en_de", len(train) + 1, 0)
    for pair in ("en_de", "en_zh"):
        full = tasks.raw_examples(f"summarize_{pair}", "train")
        share = Counter(e["stratum"] for e in full)
        assert set(share) == set(pair.split("_"))
        for df in (10, 100, 1000):
            counts = Counter(e["stratum"] for e in tasks.finetune_subset(f"summarize_{pair}", df, 2))
            for lang, n in share.items():
                assert abs(counts[lang] - df * n / len(full)) < 1.0 + 1e-9, (pair, df, counts)
