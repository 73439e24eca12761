"""Batch sources for the pretraining job: the real UL2 corpus pipeline (data.pipeline),
adapted to the trainer's resumable interface (`source(start_position)` -> iterator)."""
from __future__ import annotations

from typing import Iterator

import gin
import numpy as np

from data import pipeline
from data.vocab import get_vocabulary


@gin.configurable
class CorpusBatches:
    """UL2 pretraining batches from the committed corpora (`corpus` aligned / misaligned /
    a blend), this process's shard; `batch_size` is global."""

    def __init__(self, *, batch_size: int, seq_len: int, seed: int, shard_index: int = 0, num_shards: int = 1,
                 corpus: str | dict = "aligned", pair: str = "en-de"):
        if batch_size % num_shards:
            raise ValueError(f"batch_size {batch_size} not divisible by {num_shards} processes")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.shard_index, self.num_shards = shard_index, num_shards
        self.corpus, self.pair = corpus, pair

    @property
    def vocab_size(self) -> int:
        return int(get_vocabulary(self.pair).vocab_size)

    @property
    def description(self) -> dict:
        return {"source": "corpus", "corpus": self.corpus, "pair": self.pair, "seed": self.seed,
                "shard_index": self.shard_index, "num_shards": self.num_shards}

    def __call__(self, start_position: int) -> Iterator[dict[str, np.ndarray]]:
        return pipeline.pretrain_batches(self.corpus, self.pair, batch_size=self.batch_size // self.num_shards,
                                         seq_len=self.seq_len, seed=self.seed, start_step=start_position,
                                         shard_index=self.shard_index, num_shards=self.num_shards)

    def dev_batches(self, num_batches: int) -> list[dict[str, np.ndarray]]:
        """The fixed held-out dev batches (every host evaluates the same global batches)."""
        return pipeline.dev_batches(self.corpus, self.pair, batch_size=self.batch_size, seq_len=self.seq_len,
                                    num_batches=num_batches)
