"""Batch sources for the pretraining job, adapted to the trainer's resumable interface
(`source(start_position, state=None)` -> iterator with `save(directory)`): the committed corpora
(the default), any registered seqio Task or Mixture, TFDS text datasets, plain text files.
Each process reads its shard of every global batch."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import gin
import numpy as np

from data import pipeline, text_corpora
from data.pipeline import ResumableBatches


class MixtureBatches:
    """UL2 batches of one registered seqio Task / Mixture (`mixture`), this process's shard;
    `batch_size` is global, `vocab_size` the mixture's vocabulary."""

    def __init__(self, mixture: str, vocab_size: int, *, batch_size: int, seq_len: int, seed: int,
                 shard_index: int = 0, num_shards: int = 1):
        if batch_size % num_shards:
            raise ValueError(f"batch_size {batch_size} not divisible by {num_shards} processes")
        self.mixture, self.vocab_size = mixture, vocab_size
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.shard_index, self.num_shards = shard_index, num_shards

    @property
    def description(self) -> dict:
        """What a checkpoint records, and a resumed run must match, about its data."""
        return {"source": "mixture", "mixture": self.mixture, "seed": self.seed,
                "shard_index": self.shard_index, "num_shards": self.num_shards}

    def __call__(self, start_position: int, state: str | Path | None = None) -> ResumableBatches:
        return pipeline.pretrain_batches(self.mixture, batch_size=self.batch_size // self.num_shards,
                                         seq_len=self.seq_len, seed=self.seed, start_step=start_position,
                                         shard_index=self.shard_index, num_shards=self.num_shards, state=state)

    def dev_batches(self, num_batches: int) -> list[dict[str, np.ndarray]]:
        """The fixed held-out dev batches (every host evaluates the same global batches)."""
        return pipeline.dev_batches(self.mixture, batch_size=self.batch_size, seq_len=self.seq_len,
                                    num_batches=num_batches)


@gin.configurable
class CorpusBatches(MixtureBatches):
    """The committed corpora (`corpus` "aligned" / "misaligned" / a blend {"aligned": 0.7, ...}) of a
    language pair, or any registered seqio Task / Mixture named by `corpus`."""

    def __init__(self, *, batch_size: int, seq_len: int, seed: int, shard_index: int = 0, num_shards: int = 1,
                 corpus: str | dict = "aligned", pair: str = "en-de"):
        mixture = pipeline.resolve_pretraining(corpus, pair)
        super().__init__(mixture, pipeline.mixture_vocab_size(mixture), batch_size=batch_size, seq_len=seq_len,
                         seed=seed, shard_index=shard_index, num_shards=num_shards)
        self.corpus, self.pair = corpus, pair

    @property
    def description(self) -> dict:
        return {"source": "corpus", "corpus": self.corpus, "pair": self.pair, "seed": self.seed,
                "shard_index": self.shard_index, "num_shards": self.num_shards}


@gin.configurable
class TextCorpusBatches(MixtureBatches):
    """A corpus too large for memory: TFDS text datasets (`tfds`: [{"name": "c4/en:3.1.0", "rate": 1.0},
    ...], see data.text_corpora) or plain text files (`files`: {"train": glob, "validation": glob}),
    tokenized with the SentencePiece model `vocabulary`; `denoiser_rates` default to the UL2 mix."""

    def __init__(self, *, batch_size: int, seq_len: int, seed: int, shard_index: int = 0, num_shards: int = 1,
                 vocabulary: str = gin.REQUIRED, tfds: Sequence[Mapping] | None = None,
                 files: Mapping[str, str] | None = None, tfds_data_dir: str | None = None,
                 denoiser_rates: Mapping[str, float] | None = None):
        if (tfds is None) == (files is None):
            raise ValueError("give exactly one of TextCorpusBatches.tfds (TFDS datasets) and "
                             "TextCorpusBatches.files ({'train': glob, 'validation': glob})")
        mixture = (text_corpora.register_tfds_corpora(list(tfds), vocabulary, data_dir=tfds_data_dir,
                                                      denoiser_rates=denoiser_rates)
                   if tfds is not None else
                   text_corpora.register_text_files(dict(files), vocabulary, denoiser_rates=denoiser_rates))
        super().__init__(mixture, pipeline.mixture_vocab_size(mixture), batch_size=batch_size, seq_len=seq_len,
                         seed=seed, shard_index=shard_index, num_shards=num_shards)
        self.origin = {"tfds": list(tfds)} if tfds is not None else {"files": dict(files)}
        self.vocabulary = str(vocabulary)

    @property
    def description(self) -> dict:
        return {**super().description, **self.origin, "vocabulary": self.vocabulary}
