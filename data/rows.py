"""Prefix-LM batches of finetuning examples built in numpy from cached SentencePiece ids.

A study runs hundreds of small finetuning runs in one process; building a seqio/tf.data
pipeline per run (tracing its maps, packing) cost ~4 s each, more than training a small
model on a small Df. These rows have the exact format of seqio's PrefixLMFeatureConverter
(tests/data/pipeline/test_rows.py checks them against it): per segment, inputs + EOS are the
bidirectional prefix, targets + EOS carry the loss, decoder inputs are the targets shifted
right with 0 at each segment start.
"""
from __future__ import annotations

import functools
from typing import Iterator, Sequence

import numpy as np

from data import tasks as data_tasks
from data.pipeline import BATCH_KEYS, finetune_lengths

EOS_ID = 1
Example = tuple[np.ndarray, np.ndarray]  # (input ids + EOS, target ids + EOS)


@functools.lru_cache(maxsize=None)
def _encode(task: str, text: str, max_tokens: int) -> np.ndarray:
    """seqio's tokenize + append_eos_after_trim: the ids cut to max_tokens - 1, then EOS."""
    ids = data_tasks.FINETUNE_VOCAB[task].encode(text)[: max_tokens - 1]
    return np.asarray(list(ids) + [EOS_ID], np.int32)


def encode_examples(task: str, examples: Sequence[dict], *, seq_len: int, input_fraction: float = 0.5) -> list[Example]:
    """(inputs, targets) ids of raw examples, trimmed to the lengths the pipeline gives them."""
    lengths = finetune_lengths(seq_len, input_fraction)
    return [(_encode(task, ex["inputs"], lengths["inputs"]), _encode(task, ex["targets"], lengths["targets"]))
            for ex in examples]


def _empty(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    rows = {key: np.zeros((batch_size, seq_len), np.int32) for key in BATCH_KEYS}
    rows["decoder_loss_weights"] = np.zeros((batch_size, seq_len), np.float32)
    return rows


def _place(rows: dict, row: int, start: int, segment: int, example: Example) -> int:
    prefix, target = example
    sequence = np.concatenate([prefix, target])
    end = start + len(sequence)
    rows["decoder_target_tokens"][row, start:end] = sequence
    rows["decoder_input_tokens"][row, start + 1:end] = sequence[:-1]
    rows["decoder_loss_weights"][row, start + len(prefix):end] = 1.0
    rows["decoder_causal_attention"][row, start:start + len(prefix) + 1] = 1
    rows["decoder_segment_ids"][row, start:end] = segment
    rows["decoder_positions"][row, start:end] = np.arange(end - start)
    return end


def batches(examples: Sequence[Example], *, batch_size: int, seq_len: int, pack: bool = True) -> list[dict[str, np.ndarray]]:
    """Fixed-shape batches of `examples` in order; with `pack`, consecutive examples share a row
    while they fit (segments 1, 2, ...). The last batch is padded with empty rows."""
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"batch_size ({batch_size}) must be >= 1 and seq_len ({seq_len}) >= 2")
    out: list[dict[str, np.ndarray]] = []
    rows, row, start, segment = _empty(batch_size, seq_len), 0, 0, 0
    for example in examples:
        length = len(example[0]) + len(example[1])
        if length > seq_len:
            raise ValueError(f"example of {length} tokens does not fit seq_len={seq_len}")
        if segment and (not pack or start + length > seq_len):
            row, start, segment = row + 1, 0, 0
            if row == batch_size:
                out.append(rows)
                rows, row = _empty(batch_size, seq_len), 0
        segment += 1
        start = _place(rows, row, start, segment, example)
    if segment:
        out.append(rows)
    return out


def finetune_batches(task: str, *, finetune_examples: int, subset_seed: int, batch_size: int, seq_len: int,
                     epochs: int, seed: int = 0, input_fraction: float = 0.5) -> Iterator[dict[str, np.ndarray]]:
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
                  input_fraction: float = 0.5) -> list[dict[str, np.ndarray]]:
    """A split's examples in file order, packed (dev PPL for model selection)."""
    raw = data_tasks.raw_examples(task, split)
    if max_batches is not None:
        raw = raw[: max_batches * batch_size * max(1, seq_len // 16)]  # enough to fill max_batches packed
    packed = batches(encode_examples(task, raw, seq_len=seq_len, input_fraction=input_fraction),
                     batch_size=batch_size, seq_len=seq_len)
    return packed if max_batches is None else packed[:max_batches]
