"""UL2 pretraining over corpora too large for memory: TFDS datasets (e.g. C4 English and mC4
German) or plain text files given by glob, each tokenized with a SentencePiece model of this
project's format (T5 ids, the UL2 mode tokens; `python -m data.vocab train --text_files=...`).

Each corpus becomes one seqio Task per UL2 denoiser and a mixture of them (data.tasks); the
mixture name is what data.pipeline.pretrain_batches reads. Nothing is read or downloaded here:
registration is lazy, and a TFDS dataset that is not prepared fails with its name and data_dir.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from data import tasks
from data.tasks import DataUnavailableError
from data.tfds_tasks import check_tfds_prepared
from data.vocab import DEFAULT_EXTRA_IDS

TEXT_SPLITS = ("train", "validation")


def _vocabulary(path: str | Path | None, extra_ids: int) -> seqio.SentencePieceVocabulary:
    if path is None:
        raise ValueError("no vocabulary given: set the SentencePiece model path (e.g. VOCABULARY in the gin file)")
    if not Path(path).is_file():
        raise DataUnavailableError(f"vocabulary {path} does not exist; train one on a sample of the corpus with "
                         "`python -m data.vocab train --text_files=GLOB --out=PATH --vocab_size=N`")
    return seqio.SentencePieceVocabulary(str(path), extra_ids=extra_ids)


def _name(kind: str, spec: object) -> str:
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"ul2_{kind}_{digest}"


def register_tfds_corpora(sources: Sequence[Mapping], vocabulary: str | Path, *, data_dir: str | None = None,
                          denoiser_rates: Mapping[str, float] | None = None,
                          extra_ids: int = DEFAULT_EXTRA_IDS) -> str:
    """The UL2 mixture over TFDS text datasets, each {"name": "c4/en:3.1.0", "text_key": "text",
    "train_split": "train", "validation_split": "validation", "rate": 1.0} (defaults shown but name)."""
    if not sources:
        raise ValueError("give at least one TFDS source, e.g. {'name': 'c4/en:3.1.0'}")
    voc = _vocabulary(vocabulary, extra_ids)
    parts = {}
    for spec in sources:
        spec = {"text_key": "text", "train_split": "train", "validation_split": "validation", "rate": 1.0, **spec}
        unknown = sorted(set(spec) - {"name", "text_key", "train_split", "validation_split", "rate"})
        if "name" not in spec or unknown:
            raise ValueError(f"TFDS source {spec} needs 'name' and may have text_key, train_split, "
                             f"validation_split, rate; unknown keys: {unknown}")
        check_tfds_prepared(spec["name"], data_dir)
        source = seqio.TfdsDataSource(spec["name"], tfds_data_dir=data_dir, splits={
            "train": spec["train_split"], "validation": spec["validation_split"]})
        prefix = _name("tfds", {**spec, "vocabulary": str(vocabulary)})
        tasks.register_ul2_source(prefix, source, voc,
                                  to_documents=functools.partial(seqio.preprocessors.rekey,
                                                                 key_map={"targets": spec["text_key"]}))
        parts[tasks.register_ul2_mixture(prefix, denoiser_rates)] = float(spec["rate"])
    return parts.popitem()[0] if len(parts) == 1 else tasks.register_mixture(_name("tfds_mix", sorted(parts.items())), parts)


@seqio.map_over_dataset
def _line_to_document(line: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"targets": line}


def register_text_files(files: Mapping[str, str], vocabulary: str | Path, *,
                        denoiser_rates: Mapping[str, float] | None = None,
                        extra_ids: int = DEFAULT_EXTRA_IDS) -> str:
    """The UL2 mixture over plain text files, one document per line: {"train": glob, "validation": glob}.
    Hosts read disjoint files (give at least as many train files as hosts)."""
    if set(files) != set(TEXT_SPLITS):
        raise ValueError(f"text files must be given per split {list(TEXT_SPLITS)}, got {sorted(files)}")
    for split, pattern in files.items():
        if not isinstance(pattern, str):
            raise ValueError(f"text files for {split} must be a glob string, got {pattern!r}")
        if not tf.io.gfile.glob(pattern):
            raise DataUnavailableError(f"no {split} text files match {pattern!r}")
    source = seqio.TextLineDataSource(split_to_filepattern=dict(files))
    prefix = _name("files", {"files": dict(files), "vocabulary": str(vocabulary)})
    tasks.register_ul2_source(prefix, source, _vocabulary(vocabulary, extra_ids), to_documents=_line_to_document)
    return tasks.register_ul2_mixture(prefix, denoiser_rates)
