"""UL2 mixture of denoisers (Tay et al. 2022) as seqio preprocessors, for a decoder-only model.

R: span corruption (mean span 3 and 8, 15% noise), mode token [NLU].
X: extreme corruption (3, 50%), (8, 50%), (64, 15%), (64, 50%), mode token [NLG].
S: prefix LM with a uniformly random split point (T5's random_prefix_noise_mask, as in the UL2
   paper's appendix code: about half the chunk is target), mode token [S2S].
Each denoiser cuts the concatenated token stream into raw chunks sized so that its example
(mode token + corrupted inputs + EOS + targets + EOS) fits one packed row of the target length.
Our own code (ARCHITECTURE.md: the `t5` package is not a dependency); span noise follows T5's recipe.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from data.vocab import mode_token_id

# Tokens an example adds around its raw chunk: mode token, EOS after inputs, EOS after targets.
SPECIAL_TOKENS_PER_EXAMPLE = 3


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One denoising objective: span corruption (mean_span, noise_density) or prefix LM."""

    name: str
    mode_token: str
    mean_span: float = 0.0  # 0 = prefix LM (S-denoiser)
    noise_density: float = 0.0

    @property
    def is_prefix_lm(self) -> bool:
        return self.mean_span == 0.0


DENOISERS: dict[str, Denoiser] = {
    d.name: d
    for d in (
        Denoiser("r_3_15", "[NLU]", 3.0, 0.15),
        Denoiser("r_8_15", "[NLU]", 8.0, 0.15),
        Denoiser("x_3_50", "[NLG]", 3.0, 0.5),
        Denoiser("x_8_50", "[NLG]", 8.0, 0.5),
        Denoiser("x_64_15", "[NLG]", 64.0, 0.15),
        Denoiser("x_64_50", "[NLG]", 64.0, 0.5),
        Denoiser("s_prefix", "[S2S]"),
    )
}

# Mixture rates (ours): S-denoising 20% of examples, the other 80% split evenly over the six
# span-corruption denoisers (R 2/6, X 4/6 of it). The seven denoisers and their (mean span,
# noise density) follow the UL2 paper; its appendix code samples the tasks uniformly unless
# rates are given (S would be 1/7), and Zhang et al. use "a modified UL2" without the rates.
UL2_DEFAULT_RATES: dict[str, float] = {
    **{name: 0.8 / 6 for name in DENOISERS if name != "s_prefix"},
    "s_prefix": 0.2,
}


def validate_rates(rates: Mapping[str, float]) -> dict[str, float]:
    """Check a denoiser-rate mapping: known names, non-negative, positive total."""
    unknown = sorted(set(rates) - set(DENOISERS))
    if unknown:
        raise ValueError(f"unknown denoisers {unknown}; valid: {sorted(DENOISERS)}")
    if any(r < 0 for r in rates.values()) or sum(rates.values()) <= 0:
        raise ValueError(f"denoiser rates must be >= 0 with a positive sum, got {dict(rates)}")
    return {k: float(v) for k, v in rates.items() if v > 0}


# ----------------------------------------------------------------------------- lengths


def max_noise_tokens(length: int, noise_density: float) -> int:
    """Most noise tokens a chunk can get: ceil(length * density), clipped to [1, length - 1]."""
    return int(min(max(math.ceil(length * noise_density), 1), length - 1))


def max_noise_spans(length: int, noise_density: float, mean_span: float) -> int:
    """Most noise spans a chunk can get (span counts are randomly rounded; see noise_span_mask)."""
    noise = max_noise_tokens(length, noise_density)
    return int(min(max(math.ceil(noise / mean_span), 1), length - 1))


def example_length(denoiser: Denoiser, raw_length: int) -> int:
    """Most tokens (inputs + targets incl. mode token and EOSes) an example of a raw chunk has."""
    if denoiser.is_prefix_lm:
        return raw_length + SPECIAL_TOKENS_PER_EXAMPLE
    spans = max_noise_spans(raw_length, denoiser.noise_density, denoiser.mean_span)
    return raw_length + 2 * spans + SPECIAL_TOKENS_PER_EXAMPLE


def raw_chunk_length(denoiser: Denoiser, packed_length: int, num_sentinels: int) -> int:
    """Longest raw chunk whose example fits `packed_length` and needs <= num_sentinels spans."""
    best = 0
    for n in range(2, packed_length + 1):
        if example_length(denoiser, n) > packed_length:
            break
        if not denoiser.is_prefix_lm and max_noise_spans(
            n, denoiser.noise_density, denoiser.mean_span
        ) > num_sentinels:
            break
        best = n
    if best < 2:
        raise ValueError(
            f"packed length {packed_length} is too short for denoiser {denoiser.name}; "
            f"use a sequence length of at least {example_length(denoiser, 2)}"
        )
    return best


# ----------------------------------------------------------------------------- TF ops


def _random_segmentation(num_items: tf.Tensor, num_segments: tf.Tensor, seed) -> tf.Tensor:
    """Split num_items into num_segments non-empty parts uniformly at random (lengths)."""
    cuts = tf.argsort(tf.random.stateless_uniform([num_items - 1], seed=seed))
    cuts = tf.sort(cuts[: num_segments - 1] + 1)
    bounds = tf.concat([[0], cuts, [num_items]], axis=0)
    return bounds[1:] - bounds[:-1]


def _random_round(value: tf.Tensor, uniform: tf.Tensor) -> tf.Tensor:
    """floor(value) + Bernoulli(frac(value)): unbiased rounding, so expectations are exact."""
    floor = tf.floor(value)
    return tf.cast(floor, tf.int32) + tf.cast(uniform < value - floor, tf.int32)


def noise_span_mask(length: tf.Tensor, noise_density: float, mean_span: float, seed) -> tf.Tensor:
    """Boolean noise mask of `length`: alternating non-noise / noise spans, starting non-noise.

    T5's recipe (noise tokens = length * density, spans = noise / mean_span, both segmented
    uniformly at random) with random instead of nearest rounding of the two counts, so that
    over many chunks the noise density and mean span length equal the configured values even
    when a chunk holds only one or two long spans (mean span 64).
    """
    length = tf.cast(length, tf.int32)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    uniforms = tf.random.stateless_uniform([2], seed=seeds[2], dtype=tf.float64)
    noise = _random_round(tf.cast(length, tf.float64) * noise_density, uniforms[0])
    noise = tf.clip_by_value(noise, 1, length - 1)
    spans = _random_round(tf.cast(noise, tf.float64) / mean_span, uniforms[1])
    spans = tf.minimum(tf.maximum(spans, 1), length - noise)
    noise_lengths = _random_segmentation(noise, spans, seeds[0])
    keep_lengths = _random_segmentation(length - noise, spans, seeds[1])
    interleaved = tf.reshape(tf.stack([keep_lengths, noise_lengths], axis=1), [-1])
    is_noise = tf.tile([False, True], [spans])
    return tf.repeat(is_noise, interleaved)


def spans_to_sentinels(tokens: tf.Tensor, mask: tf.Tensor, first_sentinel: int) -> tf.Tensor:
    """Replace each masked span by one sentinel (first_sentinel, first_sentinel - 1, ...)."""
    previous = tf.concat([[False], mask[:-1]], axis=0)
    span_start = tf.logical_and(mask, tf.logical_not(previous))
    span_index = tf.cumsum(tf.cast(span_start, tf.int32))
    tokens = tf.where(span_start, first_sentinel + 1 - span_index, tokens)
    keep = tf.logical_or(tf.logical_not(mask), span_start)
    return tf.boolean_mask(tokens, keep)


def corrupt_spans(tokens, denoiser: Denoiser, first_sentinel: int, seed):
    """(inputs, targets) of span corruption: inputs keep non-noise, targets hold the noise."""
    mask = noise_span_mask(tf.size(tokens), denoiser.noise_density, denoiser.mean_span, seed)
    inputs = spans_to_sentinels(tokens, mask, first_sentinel)
    # Sentinel i marks noise span i in both: the targets' i-th "span" is the i-th non-noise run.
    targets = spans_to_sentinels(tokens, tf.logical_not(mask), first_sentinel)
    return inputs, targets


def split_prefix(tokens, seed):
    """(inputs, targets) of prefix LM: split point uniform in [1, len - 1], so neither side is empty
    (T5's random_prefix_noise_mask, which the UL2 paper's appendix code uses for its S-denoiser:
    the targets are on average half the chunk)."""
    length = tf.size(tokens)
    split = tf.random.stateless_uniform([], seed=seed, minval=tf.minimum(1, length - 1), maxval=length,
                                        dtype=tf.int32)
    return tokens[:split], tokens[split:]


# ----------------------------------------------------------------------------- preprocessors


def concat_and_chunk(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    *,
    denoiser: Denoiser,
    docs_per_group: int = 128,
) -> tf.data.Dataset:
    """Concatenate tokenized "targets" of groups of documents and cut them into raw chunks.

    The chunk length is the denoiser's `raw_chunk_length` for the packed row length
    `sequence_length["targets"]`; only group tails shorter than 2 tokens are dropped.
    """
    vocabulary = output_features["targets"].vocabulary
    chunk = raw_chunk_length(denoiser, sequence_length["targets"], vocabulary.extra_ids)

    def split(group: tf.RaggedTensor) -> tf.RaggedTensor:
        flat = group.flat_values
        total = tf.size(flat)
        full = total // chunk
        tail = total - full * chunk
        lengths = tf.concat([tf.fill([full], chunk), tf.boolean_mask([tail], [tail > 0])], 0)
        return tf.RaggedTensor.from_row_lengths(flat, lengths)

    dataset = dataset.map(lambda ex: ex["targets"], num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.ragged_batch(docs_per_group).map(split, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.unbatch().filter(lambda tokens: tf.size(tokens) >= 2)
    return dataset.map(lambda tokens: {"targets": tokens})


def denoise(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature],
    *,
    denoiser: Denoiser,
) -> tf.data.Dataset:
    """Turn raw chunks {"targets"} into {"inputs": [mode] + corrupted, "targets": ...}."""
    vocabulary = output_features["targets"].vocabulary
    mode = mode_token_id(vocabulary, denoiser.mode_token)
    first_sentinel = vocabulary.vocab_size - 1

    @seqio.map_over_dataset(num_seeds=1)
    def apply(example, seed):
        tokens = example["targets"]
        if denoiser.is_prefix_lm:
            inputs, targets = split_prefix(tokens, seed)
        else:
            inputs, targets = corrupt_spans(tokens, denoiser, first_sentinel, seed)
        inputs = tf.concat([[mode], tf.cast(inputs, tf.int32)], axis=0)
        return {"inputs": inputs, "targets": tf.cast(targets, tf.int32)}

    return apply(dataset)


def denoiser_preprocessors(denoiser: Denoiser, docs_per_group: int = 128) -> list:
    """The seqio preprocessors after tokenization that make one denoiser's examples."""
    return [
        functools.partial(concat_and_chunk, denoiser=denoiser, docs_per_group=docs_per_group),
        functools.partial(denoise, denoiser=denoiser),
        seqio.preprocessors.append_eos_after_trim,
    ]


# ----------------------------------------------------------------------------- checks


def reconstruct(inputs: Sequence[int], targets: Sequence[int], sentinel_ids: set[int]) -> list[int]:
    """Undo span corruption: put each sentinel's target span back into the inputs (for tests)."""
    spans: dict[int, list[int]] = {}
    current = None
    for token in targets:
        if token in sentinel_ids:
            current = token
            spans[current] = []
        elif current is not None:
            spans[current].append(int(token))
    out: list[int] = []
    for token in inputs:
        out.extend(spans.get(token, [])) if token in sentinel_ids else out.append(int(token))
    return out


def noise_statistics(mask: np.ndarray) -> tuple[float, float]:
    """(noise density, mean noise-span length) of a boolean mask."""
    mask = np.asarray(mask, bool)
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    return float(mask.mean()), float(mask.sum() / max(starts.sum(), 1))
