"""Packed prefix-LM batch iterators over seqio Tasks/Mixtures: pretraining, dev, finetuning.

Batches are dicts of numpy arrays [batch, seq_len] in data.rows' format (seqio
PrefixLMFeatureConverter names, pack=True). Iteration is deterministic given (seed, start_step):
the same pipeline is rebuilt and `start_step` batches are skipped, so a resumed run sees exactly
the batches it would have seen. Each host reads shard `shard_index` of `num_shards`; batch_size
is the per-host batch.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Iterator, Mapping

import gin
import numpy as np
import seqio
import tensorflow as tf

from data import tasks as _tasks  # registers the tasks
from data.rows import BATCH_KEYS, INPUT_FRACTION, finetune_lengths, pad_batch
from data.vocab import vocab_path

# Our FunctionDataSources hold the whole split in memory and permute it fully per epoch, so
# seqio's warning about insufficient shuffling of uncached function sources does not apply.
logging.getLogger("absl").addFilter(lambda record: "uncached FunctionDataset" not in record.getMessage())



class PackedPrefixLMFeatureConverter(seqio.PrefixLMFeatureConverter):
    """seqio's PrefixLMFeatureConverter with rows of `packed_length` (not inputs + targets length).

    Task features are checked against {"inputs": L, "targets": L}; each example must have
    len(inputs) + len(targets) <= L (our tasks guarantee it: UL2 chunks are sized to fit and
    finetuning trims inputs/targets to fractions of L), so packing never truncates.
    """

    def __init__(self, packed_length: int, **kwargs) -> None:
        self._packed_length = packed_length
        super().__init__(pack=True, **kwargs)

    def _concat_task_feature_lengths(self, task_feature_lengths: Mapping[str, int]):
        length = self._packed_length
        return {"targets": length, "inputs_width": length, "inputs_width_add_pos": length}

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]):
        return {k: self._packed_length for k in BATCH_KEYS}


def derived_seed(seed: int, name: str) -> int:
    """A per-task seed, so tasks sharing a source (the denoisers) see independent orders."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


def _check_args(batch_size: int, seq_len: int, shard_index: int, num_shards: int, start_step: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seq_len < 8:
        raise ValueError(f"seq_len must be >= 8, got {seq_len}")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} must be in [0, num_shards={num_shards})")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")


def _check_vocabulary(provider) -> None:
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    for task in tasks:
        path = task.output_features["targets"].vocabulary.sentencepiece_model_file
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"SentencePiece model {path} (task {task.name}) not found; "
                "train it with `python -m data.vocab train`"
            )


def examples_dataset(
    name: str,
    *,
    split: str,
    sequence_length: Mapping[str, int],
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    shard_index: int = 0,
    num_shards: int = 1,
) -> tf.data.Dataset:
    """{"inputs", "targets"} examples of a registered Task or Mixture (mixtures sampled by rate)."""
    provider = seqio.get_mixture_or_task(name)
    _check_vocabulary(provider)
    shard_info = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    datasets = []
    for task in tasks:
        ds = task.get_dataset(
            sequence_length=dict(sequence_length), split=split, shuffle=shuffle,
            seed=derived_seed(seed, task.name), shard_info=shard_info, num_epochs=num_epochs,
            try_in_mem_cache=False,
        )
        datasets.append(ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]}))
    if len(datasets) == 1:
        dataset = datasets[0]
    else:
        rates = [float(provider.get_rate(t)) for t in tasks]
        dataset = tf.data.Dataset.sample_from_datasets(
            datasets, weights=[r / sum(rates) for r in rates], seed=seed
        )
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options)


def packed_dataset(examples: tf.data.Dataset, *, seq_len: int) -> tf.data.Dataset:
    """Pack prefix-LM examples into rows of seq_len with seqio's PrefixLM converter."""
    converter = PackedPrefixLMFeatureConverter(seq_len)
    return converter(examples, {"inputs": seq_len, "targets": seq_len})


def _to_numpy(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: np.asarray(batch[k], dtype=np.int32) for k in BATCH_KEYS}
    out["decoder_loss_weights"] = out["decoder_loss_weights"].astype(np.float32)
    return out


def _iterate(dataset: tf.data.Dataset, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    dataset = dataset.skip(start_step).prefetch(tf.data.AUTOTUNE)
    for batch in dataset.as_numpy_iterator():
        yield _to_numpy(batch)


class ResumableBatches:
    """Numpy batches of a tf.data pipeline whose position can be saved and restored.

    `save(directory)` writes the iterator's state (a tf.data iterator checkpoint: positions and
    small buffers, not the data) and `ResumableBatches(dataset, state=directory)` continues
    exactly where it was: O(1) resume instead of replaying every earlier batch. Without a state,
    `start_step` batches are skipped (the pipeline is deterministic, so both give the same batches).
    """

    STATE_PREFIX = "iterator"

    def __init__(self, dataset: tf.data.Dataset, *, start_step: int = 0, state: str | Path | None = None):
        # Always a Skip node (of 0 batches when a state is restored, kept by turning off tf.data's
        # no-op elimination): an iterator checkpoint only restores into a pipeline of the same
        # structure as the one that saved it, whether that one replayed or was restored itself.
        options = tf.data.Options()
        options.experimental_optimization.noop_elimination = False
        dataset = dataset.skip(0 if state is not None else start_step).with_options(options)
        self._iterator = iter(dataset.prefetch(tf.data.AUTOTUNE))
        if state is not None:
            prefix = str(Path(state) / self.STATE_PREFIX)
            if not tf.io.gfile.exists(prefix + ".index"):
                raise ValueError(f"no data-position checkpoint in {state} (expected {prefix}.index)")
            tf.train.Checkpoint(iterator=self._iterator).read(prefix).assert_consumed()

    def __iter__(self) -> "ResumableBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return _to_numpy({k: v.numpy() for k, v in next(self._iterator).items()})

    def save(self, directory: str | Path) -> None:
        """Write the position (the next batch to come) under `directory`."""
        tf.train.Checkpoint(iterator=self._iterator).write(str(Path(directory) / self.STATE_PREFIX))


@gin.configurable(module="data")
def pretrain_batches(
    corpus: str | Mapping[str, float] = "aligned",
    pair: str = "en-de",
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    start_step: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    denoiser_rates: Mapping[str, float] | None = None,
    state: str | Path | None = None,
) -> ResumableBatches:
    """Endless UL2 pretraining batches; batch k of this call is global batch start_step + k
    (or, with `state`, the batch after the position saved there by ResumableBatches.save).

    corpus: "aligned", "misaligned", a blend {"aligned": 0.5, "misaligned": 0.5}, or the name of
    any registered seqio Task/Mixture producing inputs/targets. denoiser_rates: UL2 denoiser rates
    (default data.ul2.UL2_DEFAULT_RATES).
    """
    _check_args(batch_size, seq_len, shard_index, num_shards, start_step)
    name = resolve_pretraining(corpus, pair, denoiser_rates)
    examples = examples_dataset(
        name, split="train", sequence_length={"inputs": seq_len, "targets": seq_len}, seed=seed,
        shuffle=True, num_epochs=None, shard_index=shard_index, num_shards=num_shards,
    )
    batches = packed_dataset(examples, seq_len=seq_len).batch(batch_size, drop_remainder=True)
    return ResumableBatches(batches, start_step=start_step, state=state)


def mixture_vocab_size(name: str) -> int:
    """Vocabulary size (sentinels included) of a registered Task or Mixture."""
    return int(seqio.get_mixture_or_task(name).output_features["targets"].vocabulary.vocab_size)


def resolve_pretraining(corpus: str | Mapping[str, float], pair: str = "en-de",
                        denoiser_rates: Mapping[str, float] | None = None) -> str:
    """The registered Task/Mixture name of a pretraining corpus: a bundled corpus ("aligned",
    "misaligned"), a blend of them {"aligned": 0.7, ...}, or any registered name."""
    if isinstance(corpus, str) and corpus not in _tasks.CORPORA:
        if corpus not in seqio.TaskRegistry.names() and corpus not in seqio.MixtureRegistry.names():
            raise ValueError(
                f"unknown pretraining corpus or task {corpus!r}; valid: {_tasks.CORPORA}, a blend "
                "dict of their rates, or a registered seqio task/mixture name"
            )
        return corpus
    return _tasks.pretraining_mixture(pair, corpus, denoiser_rates)


@gin.configurable(module="data")
def dev_batches(
    corpus: str | Mapping[str, float] = "aligned",
    pair: str = "en-de",
    *,
    batch_size: int,
    seq_len: int,
    num_batches: int = 8,
    seed: int = 0,
    denoiser_rates: Mapping[str, float] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Fixed pretraining dev batches (held-out documents, every denoiser), same for every call."""
    _check_args(batch_size, seq_len, 0, 1, 0)
    name = resolve_pretraining(corpus, pair, denoiser_rates)
    examples = examples_dataset(
        name, split="validation", sequence_length={"inputs": seq_len, "targets": seq_len},
        seed=seed, shuffle=False, num_epochs=1,
    )
    batches = packed_dataset(examples, seq_len=seq_len).batch(batch_size, drop_remainder=True)
    return list(_iterate(batches.take(num_batches), 0))


@gin.configurable(module="data")
def finetune_batches(
    task: str,
    *,
    finetune_examples: int,
    subset_seed: int,
    batch_size: int,
    seq_len: int,
    epochs: int = 1,
    seed: int = 0,
    start_step: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    input_fraction: float = INPUT_FRACTION,
) -> Iterator[dict[str, np.ndarray]]:
    """Packed batches of a Df-example subset (nested across Df per subset_seed) for `epochs`.

    Ends after `epochs` passes; the final batch is padded with empty rows. Inputs are trimmed to
    input_fraction * seq_len tokens, targets to the rest.
    """
    _check_args(batch_size, seq_len, shard_index, num_shards, start_step)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    name = _tasks.register_finetune_subset(task, finetune_examples, subset_seed)
    examples = examples_dataset(
        name, split="train", sequence_length=finetune_lengths(seq_len, input_fraction),
        seed=seed, shuffle=True, num_epochs=epochs, shard_index=shard_index, num_shards=num_shards,
    )
    batches = packed_dataset(examples, seq_len=seq_len).batch(batch_size)
    return (pad_batch(b, batch_size) for b in _iterate(batches, start_step))


@gin.configurable(module="data")
def eval_batches(
    task: str,
    split: str = "validation",
    *,
    batch_size: int,
    seq_len: int,
    input_fraction: float = INPUT_FRACTION,
    max_batches: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """All examples of a finetuning task split, packed in file order (dev / test token PPL)."""
    _check_args(batch_size, seq_len, 0, 1, 0)
    _tasks._known_finetune_task(task)
    examples = examples_dataset(
        task, split=split, sequence_length=finetune_lengths(seq_len, input_fraction), seed=0,
        shuffle=False, num_epochs=1,
    )
    batches = packed_dataset(examples, seq_len=seq_len).batch(batch_size)
    if max_batches is not None:
        batches = batches.take(max_batches)
    return [pad_batch(b, batch_size) for b in _iterate(batches, 0)]


raw_examples = _tasks.raw_examples
__all__ = ["pretrain_batches", "dev_batches", "finetune_batches", "eval_batches", "raw_examples",
           "PackedPrefixLMFeatureConverter", "vocab_path"]
