"""Synthetic prefix-LM batches in the pipeline's batch format, for tests and benchmarks ONLY.

Never a default: a job uses it only when its gin file binds `pretrain.batch_source =
@SyntheticBatches` explicitly. Each sequence packs segments of arithmetic progressions
mod vocab (learnable, so loss falls), with a bidirectional prefix and loss on the rest.
"""
from __future__ import annotations

import time
from typing import Iterator

import gin
import numpy as np

from data.rows import empty_rows, place_example


def synthetic_batch(batch_number: int, *, rows: int, seq_len: int, vocab_size: int, seed: int,
                    first_row: int = 0) -> dict[str, np.ndarray]:
    """Rows [first_row, first_row + rows) of global batch `batch_number` (deterministic)."""
    out = empty_rows(rows, seq_len)
    for r in range(rows):
        rng = np.random.default_rng([seed, batch_number, first_row + r])
        pos, segment = 0, 1
        while pos < seq_len - 4:
            length = int(rng.integers(4, max(5, seq_len // 2)))
            length = min(length, seq_len - pos)
            if rng.random() < 0.15 and segment > 1:  # leave some padding at the end
                break
            start, stride = rng.integers(3, vocab_size), rng.integers(1, 4)
            tokens = (start + stride * np.arange(length)) % (vocab_size - 3) + 3
            prefix = int(rng.integers(1, length))
            pos = place_example(out, r, pos, segment, tokens[:prefix], tokens[prefix:])
            segment += 1
    return out


@gin.configurable
class SyntheticBatches:
    """Resumable synthetic batch source: `source(start_position)` yields this process's rows
    of global batches start_position, start_position + 1, ...; `delay_seconds` slows it
    (to let tests interrupt a run mid-way)."""

    def __init__(self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0,
                 shard_index: int = 0, num_shards: int = 1, delay_seconds: float = 0.0,
                 num_batches: int | None = None):
        if batch_size % num_shards:
            raise ValueError(f"batch_size {batch_size} not divisible by num_shards {num_shards}")
        self.rows = batch_size // num_shards
        self.first_row = shard_index * self.rows
        self.seq_len, self.vocab_size, self.seed = seq_len, vocab_size, seed
        self.delay_seconds, self.num_batches = delay_seconds, num_batches
        self.batch_size = batch_size

    @property
    def description(self) -> dict:
        return {"source": "synthetic", "seed": self.seed}

    def dev_batches(self, num_batches: int) -> list[dict[str, np.ndarray]]:
        """Fixed held-out batches (numbers far past any training position), full global rows."""
        return [synthetic_batch(10**9 + i, rows=self.batch_size, seq_len=self.seq_len,
                                vocab_size=self.vocab_size, seed=self.seed) for i in range(num_batches)]

    def __call__(self, start_position: int) -> Iterator[dict[str, np.ndarray]]:
        number = start_position
        while self.num_batches is None or number < self.num_batches:
            if self.delay_seconds:
                time.sleep(self.delay_seconds)
            yield synthetic_batch(number, rows=self.rows, seq_len=self.seq_len, vocab_size=self.vocab_size,
                                  seed=self.seed, first_row=self.first_row)
            number += 1
