"""seqio Tasks and Mixtures: UL2 pretraining per corpus and pair, MT, summarization, TFDS tasks.

Names (pair written with "_", e.g. en_de):
  ul2_{pair}_{corpus}_{denoiser}   one denoiser over one monolingual corpus (aligned/misaligned)
  ul2_{pair}_{corpus}              the UL2 mixture of denoisers over it (UL2_DEFAULT_RATES)
  mt_{src}_{tgt}                   translation, inputs "translate {Src} to {Tgt}: " + source
  summarize_{pair}                 package-description summarization in the pair's languages
  tfds_*                           real-scale tasks on TFDS names (never downloaded in tests)
Finetuning subsets and blended pretraining mixtures are registered on demand (functions below).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import zlib
from typing import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from data import corpora, ul2
from data.vocab import DEFAULT_EXTRA_IDS, PAIRS, vocab_path

CORPORA = ("aligned", "misaligned")
MT_DIRECTIONS = (("en", "de"), ("de", "en"), ("en", "zh"), ("zh", "en"))
LANGUAGE_NAMES = {
    "en": "English", "de": "German", "zh": "Chinese", "fr": "French", "es": "Spanish",
    "it": "Italian", "ja": "Japanese", "ru": "Russian", "pt": "Portuguese", "nl": "Dutch",
}
PRETRAIN_SPLITS = ("train", "validation")
FINETUNE_SPLITS = ("train", "validation", "test")
_CORPORA_SPLIT = {"train": "train", "validation": "dev", "test": "test"}
VALIDATION_PERCENT = 1  # of monolingual documents held out (by a stable hash) for pretraining dev
# Sources are fully permuted per epoch (seeded); the post-processing shuffle only mixes chunks
# of neighbouring document groups, so a small buffer keeps start-up (and resume) fast.
SHUFFLE_BUFFER = 256


class DataUnavailableError(ValueError):
    """Data a job needs is not on this machine (not downloaded or prepared); the message says where
    it was looked for and how to get it. Planning reports it as a check deferred to the cluster."""


def pair_name(pair: str) -> str:
    return pair.replace("-", "_")


def vocabulary_for(pair: str, extra_ids: int = DEFAULT_EXTRA_IDS) -> seqio.SentencePieceVocabulary:
    """Lazy seqio vocabulary of a pair (the model file is read on first use)."""
    return seqio.SentencePieceVocabulary(str(vocab_path(pair)), extra_ids=extra_ids)


def output_features(vocabulary) -> dict[str, seqio.Feature]:
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }


def _register(name: str, **kwargs) -> seqio.Task:
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    kwargs.setdefault("shuffle_buffer_size", SHUFFLE_BUFFER)
    return seqio.TaskRegistry.add(name, **kwargs)


def register_mixture(name: str, rates: Mapping[str, float]) -> str:
    """(Re)register a seqio Mixture of registered tasks/mixtures with the given rates."""
    rates = {k: float(v) for k, v in rates.items() if v > 0}
    if not rates:
        raise ValueError(f"mixture {name!r} needs at least one positive rate, got {rates}")
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, list(rates.items()))
    return name


def _string_source(examples_fn: Callable[[str], Sequence[Mapping[str, str]]], splits, keys):
    """seqio FunctionDataSource over in-memory string examples; shuffled fully with the seed."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        examples = examples_fn(split)
        if not examples:
            raise ValueError(f"split {split!r} has no examples")
        ds = tf.data.Dataset.from_tensor_slices({k: [e[k] for e in examples] for k in keys})
        if shuffle_files:
            ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
        return ds

    return seqio.FunctionDataSource(dataset_fn, splits=splits)


def _document_stream_source(texts_fn: Callable[[str], Sequence[Mapping[str, str]]], splits):
    """seqio FunctionDataSource over in-memory documents {"targets": text}. Shuffled, it is an
    endless stream of epochs, each a stateless permutation (index_shuffle of (seed, epoch)) of the
    documents, so a checkpoint of the iterator holds a position, not a shuffle buffer of the
    whole corpus (data.pipeline resumes pretraining from it in O(1)); unshuffled, one pass in order."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        texts = [e["targets"] for e in texts_fn(split)]
        if not texts:
            raise ValueError(f"split {split!r} has no documents")
        table = tf.constant(texts)
        if not shuffle_files:
            return tf.data.Dataset.from_tensor_slices({"targets": table})
        n = len(texts)
        seed = 0 if seed is None else int(seed)

        def document(position):
            epoch, index = position // n, position % n
            key = tf.stack([tf.constant(seed, tf.int64), epoch])
            shuffled = tf.random.experimental.index_shuffle(index, key, tf.constant(n - 1, tf.int64))
            return {"targets": tf.gather(table, shuffled)}

        return tf.data.Dataset.range(tf.int64.max).map(document)

    return seqio.FunctionDataSource(dataset_fn, splits=splits)


# ----------------------------------------------------------------------------- pretraining


def stable_percent(text: str) -> int:
    """0..99 from a stable hash of the text (train / validation assignment)."""
    return zlib.crc32(text.encode("utf-8")) % 100


def split_documents(texts: Sequence[str], split: str) -> list[dict[str, str]]:
    """Documents of a pretraining split: `validation` = VALIDATION_PERCENT% by stable hash."""
    if split not in PRETRAIN_SPLITS:
        raise ValueError(f"unknown pretraining split {split!r}; valid: {PRETRAIN_SPLITS}")
    held_out = split == "validation"
    return [
        {"targets": t} for t in texts if t.strip() and (stable_percent(t) < VALIDATION_PERCENT) == held_out
    ]


def register_ul2_tasks(
    prefix: str,
    texts_fn: Callable[[], Sequence[str]],
    vocabulary,
    denoisers: Sequence[str] = tuple(ul2.DENOISERS),
) -> list[str]:
    """One seqio Task per denoiser over the documents texts_fn() returns; names prefix_{denoiser}."""
    cached = functools.lru_cache(maxsize=None)(lambda split: split_documents(texts_fn(), split))
    return register_ul2_source(prefix, _document_stream_source(cached, PRETRAIN_SPLITS), vocabulary,
                               denoisers=denoisers)


def register_ul2_source(
    prefix: str,
    source: seqio.DataSource,
    vocabulary,
    *,
    to_documents: Callable | None = None,
    denoisers: Sequence[str] = tuple(ul2.DENOISERS),
) -> list[str]:
    """One seqio Task per denoiser over any seqio DataSource of documents (in-memory corpora, TFDS,
    text files); `to_documents` maps its examples to {"targets": text} first."""
    names = []
    for name in denoisers:
        denoiser = ul2.DENOISERS[name]
        _register(
            f"{prefix}_{name}",
            source=source,
            output_features=output_features(vocabulary),
            preprocessors=[
                *([to_documents] if to_documents is not None else []),
                functools.partial(seqio.preprocessors.tokenize, with_eos=False),
                *ul2.denoiser_preprocessors(denoiser),
            ],
        )
        names.append(f"{prefix}_{name}")
    return names


def register_ul2_mixture(prefix: str, denoiser_rates: Mapping[str, float] | None = None) -> str:
    """Mixture of prefix_{denoiser} tasks with the given rates (default: the UL2 recipe)."""
    rates = ul2.validate_rates(denoiser_rates or ul2.UL2_DEFAULT_RATES)
    name = prefix if denoiser_rates is None else f"{prefix}_mod{_rates_tag(rates)}"
    return register_mixture(name, {f"{prefix}_{d}": r for d, r in rates.items()})


def _rates_tag(rates: Mapping[str, float]) -> str:
    text = ",".join(f"{k}={rates[k]:.6g}" for k in sorted(rates))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _monolingual(pair: str, corpus: str) -> list[str]:
    return corpora.load_monolingual(pair, corpus)


def pretraining_mixture(
    pair: str,
    corpus_rates: str | Mapping[str, float] = "aligned",
    denoiser_rates: Mapping[str, float] | None = None,
) -> str:
    """Name of the UL2 mixture over one corpus ("aligned") or a blend ({"aligned": .7, ...})."""
    if pair not in PAIRS:
        raise ValueError(f"unknown language pair {pair!r}; valid: {PAIRS}")
    if isinstance(corpus_rates, str):
        corpus_rates = {corpus_rates: 1.0}
    unknown = sorted(set(corpus_rates) - set(CORPORA))
    if unknown:
        raise ValueError(f"unknown corpora {unknown}; valid: {CORPORA}")
    parts = {
        register_ul2_mixture(f"ul2_{pair_name(pair)}_{c}", denoiser_rates): r
        for c, r in corpus_rates.items() if r > 0
    }
    if len(parts) == 1:
        return next(iter(parts))
    tag = "_".join(f"{c}{corpus_rates[c]:g}" for c in sorted(corpus_rates) if corpus_rates[c] > 0)
    suffix = "" if denoiser_rates is None else f"_mod{_rates_tag(ul2.validate_rates(denoiser_rates))}"
    return register_mixture(f"ul2_{pair_name(pair)}_blend_{tag}{suffix}", parts)


# ----------------------------------------------------------------------------- finetuning

# name -> callable(split) -> list of {"inputs", "targets", "source", "reference", "stratum"}
FINETUNE_EXAMPLES: dict[str, Callable[[str], list[dict[str, str]]]] = {}
FINETUNE_VOCAB: dict[str, str] = {}
EXAMPLE_KEYS = ("inputs", "targets", "source", "reference", "stratum")
STREAM_SHUFFLE_BUFFER = 16_384  # examples: a streamed train split is read in file order, then shuffled
SMALL_SPLIT_LIMIT = 100_000  # a streamed task's validation / test split is read whole (references) up to this


@dataclasses.dataclass(frozen=True)
class StreamedSplits:
    """A finetuning task too large to hold in memory (a TFDS dataset): its split sizes (read from
    the dataset's metadata, never by counting) and its examples as a tf.data.Dataset of the
    EXAMPLE_KEYS strings, in a fixed order."""

    sizes: Callable[[str], int]
    dataset: Callable[[str], tf.data.Dataset]

    def read(self, split: str) -> list[dict[str, str]]:
        """A small split (validation, test) as a list: evaluation needs its references."""
        size = self.sizes(split)
        if size > SMALL_SPLIT_LIMIT:
            raise ValueError(f"split {split!r} has {size:,} examples: too many to read into memory "
                             f"(limit {SMALL_SPLIT_LIMIT:,}); stream it (data.pipeline) instead")
        return [{k: v.decode("utf-8") for k, v in ex.items()} for ex in self.dataset(split).as_numpy_iterator()]


STREAMED: dict[str, StreamedSplits] = {}


def mt_prefix(source_lang: str, target_lang: str) -> str:
    return f"translate {LANGUAGE_NAMES[source_lang]} to {LANGUAGE_NAMES[target_lang]}: "


def _mt_examples(source_lang: str, target_lang: str, split: str) -> list[dict[str, str]]:
    if split not in _CORPORA_SPLIT:
        raise ValueError(f"unknown split {split!r}; valid: {tuple(_CORPORA_SPLIT)}")
    xx = target_lang if source_lang == "en" else source_lang
    prefix = mt_prefix(source_lang, target_lang)
    out = []
    for ex in corpora.load_parallel(f"en-{xx}", _CORPORA_SPLIT[split]):
        source, target = (ex.en, ex.xx) if source_lang == "en" else (ex.xx, ex.en)
        out.append({"inputs": prefix + source, "targets": target, "source": source,
                    "reference": target, "stratum": getattr(ex, "domain", "")})
    return out


def summarize_prefix(lang: str) -> str:
    return f"Summarize the following document in {LANGUAGE_NAMES.get(lang, lang)}: "


def _summary_examples(pair: str, split: str) -> list[dict[str, str]]:
    """Summarization examples in the pair's two languages (the bilingual model's vocabulary)."""
    if split not in _CORPORA_SPLIT:
        raise ValueError(f"unknown split {split!r}; valid: {tuple(_CORPORA_SPLIT)}")
    languages = set(pair.split("-"))
    return [
        {"inputs": summarize_prefix(ex.lang) + ex.document, "targets": ex.summary,
         "source": ex.document, "reference": ex.summary, "stratum": ex.lang}
        for ex in corpora.load_summarization(_CORPORA_SPLIT[split]) if ex.lang in languages
    ]


def register_finetune_task(
    name: str, examples_fn: Callable[[str], list[dict[str, str]]], vocabulary, splits=FINETUNE_SPLITS
) -> str:
    """A seqio Task over string examples {"inputs", "targets", ...} (tokenize + EOS)."""
    cached = functools.lru_cache(maxsize=None)(examples_fn)
    FINETUNE_EXAMPLES[name] = cached
    FINETUNE_VOCAB[name] = vocabulary
    _register(
        name,
        source=_string_source(cached, splits, ["inputs", "targets"]),
        output_features=output_features(vocabulary),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    )
    return name


def register_streamed_finetune_task(name: str, streamed: StreamedSplits, vocabulary) -> str:
    """A seqio Task over a streamed finetuning dataset; its small splits also read as lists."""
    FINETUNE_EXAMPLES[name] = functools.lru_cache(maxsize=None)(streamed.read)
    FINETUNE_VOCAB[name] = vocabulary
    STREAMED[name] = streamed

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        ds = streamed.dataset(split)
        return ds.shuffle(STREAM_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True) if shuffle_files else ds

    _register(name, source=seqio.FunctionDataSource(dataset_fn, splits=FINETUNE_SPLITS),
              output_features=output_features(vocabulary),
              preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim])
    return name


def split_size(task: str, split: str) -> int:
    """Number of examples in a finetuning task's split (streamed tasks: from metadata, no reading)."""
    task = _known_finetune_task(task)
    if task in STREAMED:
        return STREAMED[task].sizes(split)
    return len(FINETUNE_EXAMPLES[task](split))


def subset_indices(split_examples: int, finetune_examples: int, subset_seed: int) -> np.ndarray:
    """Indices of a streamed task's Df-subset: the first Df of a seeded permutation of the split,
    so subsets are nested across Df and every host computes the same ones without reading data."""
    if not 0 < finetune_examples <= split_examples:
        raise ValueError(f"finetune_examples={finetune_examples}: the train split has {split_examples:,} "
                         f"examples; choose 1..{split_examples}")
    return np.random.default_rng(subset_seed).permutation(split_examples)[:finetune_examples]


def nested_subset_order(strata: Sequence[str], subset_seed: int) -> np.ndarray:
    """Example order whose every prefix is a Df-subset: nested, and stratum shares preserved.

    Within a stratum the order is a seeded permutation; across strata position t goes to the
    stratum furthest below its share (share * t - taken), so each prefix is within one example
    of the full split's proportions and a smaller subset is contained in every larger one.
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(subset_seed)
    names = sorted(set(strata.tolist()))
    queues = {s: rng.permutation(np.flatnonzero(strata == s)) for s in names}
    share = {s: len(queues[s]) / len(strata) for s in names}
    taken = {s: 0 for s in names}
    order = np.empty(len(strata), dtype=np.int64)
    for t in range(len(strata)):
        open_strata = [s for s in names if taken[s] < len(queues[s])]
        pick = max(open_strata, key=lambda s: (share[s] * (t + 1) - taken[s], -names.index(s)))
        order[t] = queues[pick][taken[pick]]
        taken[pick] += 1
    return order


def finetune_subset(task: str, finetune_examples: int, subset_seed: int) -> list[dict[str, str]]:
    """The Df-example training subset of an in-memory finetuning task (nested across Df for one seed)."""
    if task in STREAMED:
        raise ValueError(f"task {task!r} is streamed: its Df subsets are read through data.pipeline.finetune_batches")
    examples = FINETUNE_EXAMPLES[_known_finetune_task(task)]("train")
    if not 0 < finetune_examples <= len(examples):
        raise ValueError(
            f"finetune_examples={finetune_examples} for task {task!r}: the train split has "
            f"{len(examples)} examples; choose 1..{len(examples)}"
        )
    order = nested_subset_order([e["stratum"] for e in examples], subset_seed)
    return [examples[i] for i in order[:finetune_examples]]


def register_finetune_subset(task: str, finetune_examples: int, subset_seed: int) -> str:
    """Register {task}_df{Df}_seed{seed}: the task with its train split cut to the subset."""
    task = _known_finetune_task(task)
    name = f"{task}_df{finetune_examples}_seed{subset_seed}"
    if task in STREAMED:
        return register_streamed_finetune_task(name, _streamed_subset(STREAMED[task], finetune_examples, subset_seed),
                                               FINETUNE_VOCAB[task])
    subset = finetune_subset(task, finetune_examples, subset_seed)
    full = FINETUNE_EXAMPLES[task]

    def examples(split: str) -> list[dict[str, str]]:
        return subset if split == "train" else full(split)

    return register_finetune_task(name, examples, FINETUNE_VOCAB[task])


def _streamed_subset(streamed: StreamedSplits, finetune_examples: int, subset_seed: int) -> StreamedSplits:
    """The train split filtered to subset_indices (a boolean mask over example positions)."""
    mask = np.zeros(streamed.sizes("train"), bool)
    mask[subset_indices(len(mask), finetune_examples, subset_seed)] = True

    def dataset(split: str) -> tf.data.Dataset:
        if split != "train":
            return streamed.dataset(split)
        keep = tf.constant(mask)

        def in_subset(position, example):
            return keep[position]

        def drop_position(position, example):
            return example

        return streamed.dataset(split).enumerate().filter(in_subset).map(drop_position)

    return StreamedSplits(sizes=lambda split: finetune_examples if split == "train" else streamed.sizes(split),
                          dataset=dataset)


VOCABULARY_VARIANTS: dict[str, tuple[str, str]] = {}  # variant name -> (task, SentencePiece model path)


def with_vocabulary(task: str, vocabulary_path: str | None) -> str:
    """The finetuning task tokenized with another SentencePiece model (the one a checkpoint was
    pretrained with): registered once as {task}__vocab_{hash}; None returns the task itself."""
    task = _known_finetune_task(task)
    if vocabulary_path is None:
        return task
    if not tf.io.gfile.exists(str(vocabulary_path)):
        raise DataUnavailableError(f"vocabulary {vocabulary_path} does not exist (needed to tokenize task {task!r})")
    digest = hashlib.sha1(str(vocabulary_path).encode()).hexdigest()[:8]
    name = f"{task}__vocab_{digest}"
    if name not in VOCABULARY_VARIANTS:
        vocabulary = seqio.SentencePieceVocabulary(str(vocabulary_path), extra_ids=DEFAULT_EXTRA_IDS)
        if task in STREAMED:
            register_streamed_finetune_task(name, STREAMED[task], vocabulary)
        else:
            register_finetune_task(name, FINETUNE_EXAMPLES[task], vocabulary)
        VOCABULARY_VARIANTS[name] = (task, str(vocabulary_path))
    return name


def _known_finetune_task(task: str) -> str:
    if task not in FINETUNE_EXAMPLES:
        raise ValueError(f"unknown finetuning task {task!r}; valid: {sorted(FINETUNE_EXAMPLES)}")
    return task


def raw_examples(task: str, split: str) -> list[dict[str, str]]:
    """Raw examples of a finetuning task split: inputs (with prefix), source, reference, stratum."""
    return list(FINETUNE_EXAMPLES[_known_finetune_task(task)](split))


def register_default_tasks() -> None:
    """Register every offline task and mixture (corpora and vocabularies load lazily)."""
    for pair in PAIRS:
        vocabulary = vocabulary_for(pair)
        for corpus in CORPORA:
            prefix = f"ul2_{pair_name(pair)}_{corpus}"
            register_ul2_tasks(prefix, functools.partial(_monolingual, pair, corpus), vocabulary)
            register_ul2_mixture(prefix)
        register_finetune_task(
            f"summarize_{pair_name(pair)}", functools.partial(_summary_examples, pair), vocabulary
        )
    for src, tgt in MT_DIRECTIONS:
        pair = f"en-{tgt if src == 'en' else src}"
        register_finetune_task(
            f"mt_{src}_{tgt}", functools.partial(_mt_examples, src, tgt), vocabulary_for(pair)
        )


register_default_tasks()

# The paper-scale TFDS finetuning tasks build on this module's registries: registered last.
from data import tfds_tasks  # noqa: E402,F401
