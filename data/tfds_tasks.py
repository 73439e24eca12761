"""Paper-scale finetuning tasks on their TFDS names (for users with the data prepared): WMT14
En-De and WMT19 En-Zh both ways, with WMT14/19's own test sets or the newstest2020-2022 sets
(read by sacrebleu, which downloads them on first use), MLSum and CNN/DailyMail summarization,
and Flores-200 for zero-shot evaluation.

They are streamed tasks (data.tasks.StreamedSplits): split sizes come from the dataset's metadata,
a Df subset is a seeded permutation of example positions filtered while streaming, and only the
small validation / test splits are ever read into memory. Registration reads nothing; using a
dataset that is not prepared fails naming it and its data_dir.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import tensorflow as tf
import tensorflow_datasets as tfds
from sacrebleu.dataset import DATASETS as SACREBLEU_SETS
from sacrebleu.utils import SACREBLEU_DIR

from data import tasks
from data.tasks import EXAMPLE_KEYS, MT_DIRECTIONS, DataUnavailableError, StreamedSplits, mt_prefix, summarize_prefix

STANDARD_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
# Split sizes from the TFDS catalog, used to plan (Df against the train split) before a dataset
# is prepared; a prepared dataset's own metadata wins.
DOCUMENTED_SIZES = {"wmt14_translate/de-en:1.0.0": {"train": 4_508_785, "validation": 3_000, "test": 3_003}}
NEWSTEST_SETS = ("wmt20", "wmt21", "wmt22")  # newstest2020-2022, the test sets of Zhang et al. 2024


def check_tfds_prepared(tfds_name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The dataset's builder; DataUnavailableError naming the dataset and the data_dir when it is not prepared."""
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if not tf.io.gfile.exists(builder.data_dir):
        raise DataUnavailableError(f"TFDS dataset {tfds_name!r} is not prepared in {builder.data_dir}; prepare it with "
                         f"`tfds build {tfds_name.split(':')[0]} --data_dir={data_dir or tfds.core.constants.DATA_DIR}` "
                         "(or set data_dir / TFDS_DATA_DIR to where it is)")
    return builder


@dataclasses.dataclass(frozen=True)
class TfdsFinetuneSpec:
    """One streamed task: the TFDS dataset, how an example becomes EXAMPLE_KEYS strings, which TFDS
    split serves each of ours, and optionally a sacrebleu test set replacing the test split."""

    name: str
    tfds_name: str
    pair: str  # the language pair whose bundled vocabulary tokenizes it (or see tasks.with_vocabulary)
    to_example: Callable[[dict], dict]
    splits: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(STANDARD_SPLITS))
    test_set: tuple[str, str, str] | None = None  # (sacrebleu test set, langpair, input prefix)

    def sizes(self, split: str) -> int:
        if split == "test" and self.test_set is not None:
            return len(_sacrebleu_examples(*self.test_set))
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no {split!r} split (it has {sorted(self.splits)})")
        try:
            builder = check_tfds_prepared(self.tfds_name)
        except DataUnavailableError:
            if self.tfds_name in DOCUMENTED_SIZES:
                return DOCUMENTED_SIZES[self.tfds_name][self.splits[split]]
            raise
        return int(builder.info.splits[self.splits[split]].num_examples)

    def dataset(self, split: str) -> tf.data.Dataset:
        if split == "test" and self.test_set is not None:
            rows = _sacrebleu_examples(*self.test_set)
            return tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows] for k in EXAMPLE_KEYS})
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no {split!r} split (it has {sorted(self.splits)})")
        builder = check_tfds_prepared(self.tfds_name)
        return builder.as_dataset(split=self.splits[split], shuffle_files=False).map(self.to_example)


def _sacrebleu_examples(test_set: str, langpair: str, prefix: str) -> list[dict[str, str]]:
    """A sacrebleu test set (first reference) as examples; a clear error when it cannot be fetched."""
    dataset = SACREBLEU_SETS[test_set]
    try:
        sources = list(dataset.source(langpair))
        references = [refs[0].strip() for refs in dataset.references(langpair)]
    except Exception as error:  # noqa: BLE001  (download and file errors of every kind)
        raise DataUnavailableError(f"test set {test_set} {langpair} is not available in {SACREBLEU_DIR} and could not be "
                         f"downloaded ({type(error).__name__}: {error}); fetch it where there is network with "
                         f"`sacrebleu -t {test_set} -l {langpair} --echo src` and copy {SACREBLEU_DIR}") from None
    return [{"inputs": prefix + s, "targets": r, "source": s, "reference": r, "stratum": test_set}
            for s, r in zip(sources, references)]


def _translation(source_key: str, target_key: str, source_lang: str, target_lang: str) -> Callable[[dict], dict]:
    prefix = mt_prefix(source_lang, target_lang)

    def to_example(ex: dict) -> dict:
        return {"inputs": tf.strings.join([prefix, ex[source_key]]), "targets": ex[target_key],
                "source": ex[source_key], "reference": ex[target_key], "stratum": tf.constant("")}

    return to_example


def _summarization(document_key: str, summary_key: str, lang: str) -> Callable[[dict], dict]:
    prefix = summarize_prefix(lang)

    def to_example(ex: dict) -> dict:
        return {"inputs": tf.strings.join([prefix, ex[document_key]]), "targets": ex[summary_key],
                "source": ex[document_key], "reference": ex[summary_key], "stratum": tf.constant(lang)}

    return to_example


def specs() -> list[TfdsFinetuneSpec]:
    """Every TFDS finetuning task of the project."""
    out = []
    for tfds_name, xx in (("wmt14_translate/de-en:1.0.0", "de"), ("wmt19_translate/zh-en:1.0.0", "zh")):
        year = tfds_name[3:5]
        for src, tgt in (("en", xx), (xx, "en")):
            base = TfdsFinetuneSpec(f"tfds_wmt{year}_{src}_{tgt}", tfds_name, f"en-{xx}",
                                    _translation(src, tgt, src, tgt))
            out.append(base)
            for test_set in NEWSTEST_SETS:
                out.append(dataclasses.replace(base, name=f"{base.name}_newstest20{test_set[3:]}",
                                               test_set=(test_set, f"{src}-{tgt}", mt_prefix(src, tgt))))
    flores = {"en": "eng_Latn", "de": "deu_Latn", "zh": "zho_Hans"}
    for src, tgt in MT_DIRECTIONS:  # evaluation only: Flores-200 has no train split
        xx = tgt if src == "en" else src
        out.append(TfdsFinetuneSpec(
            f"tfds_flores200_{src}_{tgt}", f"huggingface:facebook__flores/{flores['en']}-{flores[xx]}", f"en-{xx}",
            _translation(f"sentence_{flores[src]}", f"sentence_{flores[tgt]}", src, tgt),
            splits={"validation": "dev", "test": "devtest"}))
    for lang in ("de", "es", "fr"):
        out.append(TfdsFinetuneSpec(f"tfds_mlsum_{lang}", f"huggingface:mlsum/{lang}", "en-de",
                                    _summarization("text", "summary", lang)))
    out.append(TfdsFinetuneSpec("tfds_cnn_dailymail_en", "cnn_dailymail:3.4.0", "en-de",
                                _summarization("article", "highlights", "en")))
    return out


def register_tfds_finetune_tasks() -> list[str]:
    """Register every spec as a streamed finetuning task (lazy: nothing is read or downloaded)."""
    names = [tasks.register_streamed_finetune_task(spec.name, StreamedSplits(spec.sizes, spec.dataset),
                                                   tasks.vocabulary_for(spec.pair)) for spec in specs()]
    tasks.register_mixture("tfds_summarization", {n: 1.0 for n in names if "mlsum" in n or "cnn" in n})
    return names


register_tfds_finetune_tasks()
