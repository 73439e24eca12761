"""The prefix-LM row format and the one builder of its rows, in numpy.

Batches are dicts of [batch, seq_len] arrays with seqio's PrefixLMFeatureConverter names
(BATCH_KEYS). Per segment: inputs (ending in EOS) are the bidirectional prefix, targets carry
the loss, decoder inputs are the targets shifted right with 0 at the segment start; seqio marks
the prefix plus one position as causal_attention. Segment 0 is padding. Finetuning, evaluation,
trajectory scoring and the synthetic test data all build their rows here.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# The model's input contract (model.functional.apply_model reads these keys).
BATCH_KEYS = (
    "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
    "decoder_causal_attention", "decoder_segment_ids", "decoder_positions",
)
INPUT_FRACTION = 0.5  # a finetuning row gives half of seq_len to the inputs
Example = tuple[np.ndarray, np.ndarray]  # (prefix ids, target ids)


def finetune_lengths(seq_len: int, input_fraction: float = INPUT_FRACTION) -> dict[str, int]:
    """seqio sequence lengths of a finetuning row: `input_fraction` of seq_len for the inputs."""
    if not 0.0 < input_fraction < 1.0:
        raise ValueError(f"input_fraction must be in (0, 1), got {input_fraction}")
    inputs = max(2, int(seq_len * input_fraction))
    return {"inputs": inputs, "targets": seq_len - inputs}


def empty_rows(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """A batch of padding rows (segment 0, loss weight 0)."""
    rows = {key: np.zeros((batch_size, seq_len), np.int32) for key in BATCH_KEYS}
    rows["decoder_loss_weights"] = np.zeros((batch_size, seq_len), np.float32)
    return rows


def place_example(rows: dict[str, np.ndarray], row: int, start: int, segment: int,
                  prefix: Sequence[int], target: Sequence[int]) -> int:
    """Write one (prefix, target) segment into `rows[row]` at `start`; returns its end."""
    sequence = np.concatenate([np.asarray(prefix, np.int32), np.asarray(target, np.int32)])
    end = start + len(sequence)
    rows["decoder_target_tokens"][row, start:end] = sequence
    rows["decoder_input_tokens"][row, start + 1:end] = sequence[:-1]
    rows["decoder_loss_weights"][row, start + len(prefix):end] = 1.0
    rows["decoder_causal_attention"][row, start:start + len(prefix) + 1] = 1
    rows["decoder_segment_ids"][row, start:end] = segment
    rows["decoder_positions"][row, start:end] = np.arange(end - start)
    return end


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Pad a short batch with empty rows: fixed shapes, so one compiled program serves every batch."""
    rows = next(iter(batch.values())).shape[0]
    if rows == batch_size:
        return batch
    return {k: np.concatenate([v, np.zeros((batch_size - rows,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


def batches(examples: Sequence[Example], *, batch_size: int, seq_len: int, pack: bool = True) -> list[dict[str, np.ndarray]]:
    """Fixed-shape batches of `examples` in order; with `pack`, consecutive examples share a row
    while they fit (segments 1, 2, ...). The last batch is padded with empty rows."""
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"batch_size ({batch_size}) must be >= 1 and seq_len ({seq_len}) >= 2")
    out: list[dict[str, np.ndarray]] = []
    rows, row, start, segment = empty_rows(batch_size, seq_len), 0, 0, 0
    for prefix, target in examples:
        length = len(prefix) + len(target)
        if length > seq_len:
            raise ValueError(f"example of {length} tokens does not fit seq_len={seq_len}")
        if segment and (not pack or start + length > seq_len):
            row, start, segment = row + 1, 0, 0
            if row == batch_size:
                out.append(rows)
                rows, row = empty_rows(batch_size, seq_len), 0
        segment += 1
        start = place_example(rows, row, start, segment, prefix, target)
    if segment:
        out.append(rows)
    return out
