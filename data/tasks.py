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
    """The Df-example training subset of a finetuning task (nested across Df for one seed)."""
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
    subset = finetune_subset(task, finetune_examples, subset_seed)
    full = FINETUNE_EXAMPLES[task]

    def examples(split: str) -> list[dict[str, str]]:
        return subset if split == "train" else full(split)

    return register_finetune_task(
        f"{task}_df{finetune_examples}_seed{subset_seed}", examples, FINETUNE_VOCAB[task]
    )


def _known_finetune_task(task: str) -> str:
    if task not in FINETUNE_EXAMPLES:
        raise ValueError(f"unknown finetuning task {task!r}; valid: {sorted(FINETUNE_EXAMPLES)}")
    return task


def raw_examples(task: str, split: str) -> list[dict[str, str]]:
    """Raw examples of a finetuning task split: inputs (with prefix), source, reference, stratum."""
    return list(FINETUNE_EXAMPLES[_known_finetune_task(task)](split))


# ----------------------------------------------------------------------------- TFDS (real scale)

TFDS_TASKS: dict[str, tuple[str, str]] = {}  # task name -> (tfds name, vocabulary pair)


def _tfds_translate(src_key: str, tgt_key: str, source_lang: str, target_lang: str):
    prefix = mt_prefix(source_lang, target_lang)

    @seqio.map_over_dataset
    def fn(ex):
        return {"inputs": tf.strings.join([prefix, ex[src_key]]), "targets": ex[tgt_key]}

    return fn


def _tfds_summarize(doc_key: str, summary_key: str, lang: str):
    prefix = summarize_prefix(lang)

    @seqio.map_over_dataset
    def fn(ex):
        return {"inputs": tf.strings.join([prefix, ex[doc_key]]), "targets": ex[summary_key]}

    return fn


def register_tfds_tasks() -> list[str]:
    """Register the paper-scale tasks on their TFDS names (lazy: nothing is read or downloaded)."""
    specs = []
    for src, tgt in (("en", "de"), ("de", "en")):
        specs.append((f"tfds_wmt14_{src}_{tgt}", "wmt14_translate/de-en:1.0.0", "en-de",
                      _tfds_translate(src, tgt, src, tgt)))
    for src, tgt in (("en", "zh"), ("zh", "en")):
        specs.append((f"tfds_wmt19_{src}_{tgt}", "wmt19_translate/zh-en:1.0.0", "en-zh",
                      _tfds_translate(src, tgt, src, tgt)))
    flores_code = {"en": "eng_Latn", "de": "deu_Latn", "zh": "zho_Hans"}
    for src, tgt in MT_DIRECTIONS:
        xx = tgt if src == "en" else src
        config = f"{flores_code['en']}-{flores_code[xx]}"
        specs.append((f"tfds_flores200_{src}_{tgt}", f"huggingface:facebook__flores/{config}", f"en-{xx}",
                      _tfds_translate(f"sentence_{flores_code[src]}", f"sentence_{flores_code[tgt]}", src, tgt)))
    for lang in ("de", "es", "fr"):
        specs.append((f"tfds_mlsum_{lang}", f"huggingface:mlsum/{lang}", "en-de",
                      _tfds_summarize("text", "summary", lang)))
    specs.append(("tfds_cnn_dailymail_en", "cnn_dailymail:3.4.0", "en-de",
                  _tfds_summarize("article", "highlights", "en")))
    names = []
    for name, tfds_name, pair, preprocess in specs:
        _register(
            name,
            source=seqio.TfdsDataSource(tfds_name=tfds_name),
            output_features=output_features(vocabulary_for(pair)),
            preprocessors=[preprocess, seqio.preprocessors.tokenize,
                           seqio.preprocessors.append_eos_after_trim],
        )
        TFDS_TASKS[name] = (tfds_name, pair)
        names.append(name)
    summaries = [n for n in names if "mlsum" in n or "cnn" in n]
    register_mixture("tfds_summarization", {n: 1.0 for n in summaries})
    return names


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
    register_tfds_tasks()


register_default_tasks()
