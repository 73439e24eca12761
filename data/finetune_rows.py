"""Prefix-LM batches of finetuning examples built in numpy (data.rows) from cached SentencePiece ids.

A study runs hundreds of small finetuning runs in one process; building a seqio/tf.data
pipeline per run (tracing its maps, packing) cost ~4 s each, more than training a small
model on a small Df. The rows have the exact format of seqio's PrefixLMFeatureConverter
(tests/data/pipeline/test_rows.py checks them against it); the same nested Df subsets as
data.pipeline.finetune_batches, which streams tasks too large for memory.
"""
from __future__ import annotations

import functools
from typing import Iterator, Sequence

import numpy as np

from data import tasks as data_tasks
from data.rows import INPUT_FRACTION, Example, batches, finetune_lengths
from data.vocab import EOS_ID


@functools.lru_cache(maxsize=None)
def _encode(task: str, text: str, max_tokens: int) -> np.ndarray:
    """seqio's tokenize + append_eos_after_trim: the ids cut to max_tokens - 1, then EOS."""
    ids = data_tasks.FINETUNE_VOCAB[task].encode(text)[: max_tokens - 1]
    return np.asarray(list(ids) + [EOS_ID], np.int32)


def encode_examples(task: str, examples: Sequence[dict], *, seq_len: int, input_fraction: float = INPUT_FRACTION) -> list[Example]:
    """(inputs, targets) ids of raw examples, trimmed to the lengths the pipeline gives them."""
    lengths = finetune_lengths(seq_len, input_fraction)
    return [(_encode(task, ex["inputs"], lengths["inputs"]), _encode(task, ex["targets"], lengths["targets"]))
            for ex in examples]


def finetune_batches(task: str, *, finetune_examples: int, subset_seed: int, batch_size: int, seq_len: int,
                     epochs: int, seed: int = 0, input_fraction: float = INPUT_FRACTION) -> Iterator[dict[str, np.ndarray]]:
    """`epochs` passes over the nested Df subset (data.tasks.finetune_subset), reshuffled per
    epoch by `seed`, packed; the same subsets as data.pipeline.finetune_batches."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    subset = encode_examples(task, data_tasks.finetune_subset(task, finetune_examples, subset_seed),
                             seq_len=seq_len, input_fraction=input_fraction)
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(subset))
        yield from batches([subset[i] for i in order], batch_size=batch_size, seq_len=seq_len)


def split_batches(task: str, split: str, *, batch_size: int, seq_len: int, max_batches: int | None = None,
                  input_fraction: float = INPUT_FRACTION) -> list[dict[str, np.ndarray]]:
    """A split's examples in file order, packed (dev PPL for model selection)."""
    raw = data_tasks.raw_examples(task, split)
    if max_batches is not None:
        raw = raw[: max_batches * batch_size * max(1, seq_len // 16)]  # enough to fill max_batches packed
    packed = batches(encode_examples(task, raw, seq_len=seq_len, input_fraction=input_fraction),
                     batch_size=batch_size, seq_len=seq_len)
    return packed if max_batches is None else packed[:max_batches]
