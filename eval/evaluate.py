"""Evaluate a model on a finetuning task: test PPL / token log-likelihood, greedy decoding, BLEU,
chrF, ROUGE-L (+ learned metrics when installed), and zero-shot on related tasks.

PPL is over target tokens only, on prefix-LM rows built from the same tokenized examples as
data.pipeline.eval_batches (one example per row instead of packed: the same token PPL).
Decoding reads exactly the prefix the model was trained on ([0] + inputs + EOS, inputs trimmed
as in the batches), attends to it bidirectionally (prefix-LM), and continues greedily with the
KV cache. Subsets (a test-set stratum, the first N examples) are seqio tasks registered on
demand over filtered examples, so PPL and decoding see the same examples.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import seqio
from flax import nnx
from jax.sharding import Mesh

from data import rows
from data import tasks as data_tasks
from data.rows import INPUT_FRACTION, finetune_lengths
from data.vocab import EOS_ID, vocab_path
from eval import metrics
from eval.scoring import score_batches
from model.decode import generate

# Translation tasks: mt_{src}_{tgt} (bundled corpora) and the TFDS ones (data.tfds_tasks).
_MT_RE = re.compile(r"^(?P<family>mt|tfds_wmt\d\d|tfds_flores200)_(?P<src>[a-z]+)_(?P<tgt>[a-z]+)(?P<test>_newstest\d{4})?$")
_SUMMARIZE_PREFIXES = ("summarize_", "tfds_mlsum_", "tfds_cnn_dailymail")
_VIEWS: dict[str, tuple[str, str | None, int | None]] = {}  # view name -> (base task, stratum, max_examples)


# ----------------------------------------------------------------------------- tasks and views


def _base_task(task: str) -> str:
    """The registered task a view, a Df-subset task (name_df{Df}_seed{s}) or a vocabulary variant
    (data.tasks.with_vocabulary) was made from."""
    task = _VIEWS[task][0] if task in _VIEWS else task
    task = re.sub(r"_df\d+_seed\d+$", "", task)
    return data_tasks.VOCABULARY_VARIANTS.get(task, (task, None))[0]


def check_task(task: str) -> str:
    """The task name if it is a registered finetuning task, else a ValueError listing valid ones."""
    if task not in data_tasks.FINETUNE_EXAMPLES:
        valid = sorted(n for n in data_tasks.FINETUNE_EXAMPLES if "_df" not in n and n not in _VIEWS
                       and (_MT_RE.match(n) or n.startswith(_SUMMARIZE_PREFIXES)))
        raise ValueError(f"unknown task {task!r}; valid: {valid}")
    return task


def task_kind(task: str) -> str:
    """'mt' or 'summarize' (which generation metrics apply)."""
    base = _base_task(task)
    if _MT_RE.match(base):
        return "mt"
    if base.startswith(_SUMMARIZE_PREFIXES):
        return "summarize"
    raise ValueError(f"task {task!r} is neither translation (mt_*, tfds_wmt*, tfds_flores200_*) nor "
                     f"summarization ({', '.join(p + '*' for p in _SUMMARIZE_PREFIXES)})")


def target_language(task: str) -> str | None:
    """The target language of a translation task (its BLEU tokenizer), None for summarization."""
    match = _MT_RE.match(_base_task(task))
    return match.group("tgt") if match else None


def task_vocabulary(task: str) -> seqio.SentencePieceVocabulary:
    return data_tasks.FINETUNE_VOCAB[check_task(task)]


def check_vocabulary(model: nnx.Module, task: str, *, pair: str | None = None) -> None:
    """ValueError if the task's vocabulary differs from the model's: by size, and, when the
    checkpoint's pretraining language pair is known (e.g. "en-de"), by that pair's tokenizer."""
    vocabulary = task_vocabulary(task)
    size = int(vocabulary.vocab_size)
    if model.config.vocab_size != size:
        raise ValueError(
            f"task {task!r} uses a vocabulary of {size} ids but the model has vocab_size="
            f"{model.config.vocab_size}: evaluate it on a task of its own language pair"
        )
    if pair is not None:
        if Path(vocabulary.sentencepiece_model_file).resolve() != Path(vocab_path(pair)).resolve():
            raise ValueError(
                f"task {task!r} uses the vocabulary {vocabulary.sentencepiece_model_file} but the checkpoint "
                f"was pretrained with the {pair!r} vocabulary: choose a task of the pair {pair!r}"
            )


def eval_view(task: str, *, stratum: str | None = None, max_examples: int | None = None) -> str:
    """A registered task with each split filtered to `stratum` and cut to its first max_examples."""
    check_task(task)
    if stratum is None and max_examples is None:
        return task
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):
        raise ValueError(f"max_examples={max_examples!r} must be a positive integer or None")
    base, base_stratum, base_max = _VIEWS.get(task, (task, None, None))
    if stratum is not None and base_stratum is not None and stratum != base_stratum:
        raise ValueError(f"task {task!r} is already restricted to stratum {base_stratum!r}, not {stratum!r}")
    stratum = stratum if stratum is not None else base_stratum
    if base_max is not None:
        max_examples = base_max if max_examples is None else min(max_examples, base_max)
    if stratum is not None:
        known = sorted({e["stratum"] for e in data_tasks.raw_examples(base, "test")})
        if stratum not in known:
            raise ValueError(f"unknown stratum {stratum!r} of task {base!r}; valid: {known}")
    name = base + (f"__{stratum}" if stratum else "") + (f"__first{max_examples}" if max_examples else "")
    if name not in _VIEWS:
        source = data_tasks.FINETUNE_EXAMPLES[base]

        def examples(split: str) -> list[dict[str, str]]:
            rows = [e for e in source(split) if stratum is None or e["stratum"] == stratum]
            return rows[:max_examples] if max_examples else rows

        data_tasks.register_finetune_task(name, examples, data_tasks.FINETUNE_VOCAB[base])
        _VIEWS[name] = (base, stratum, max_examples)
    return name


# ----------------------------------------------------------------------------- decoding


@functools.lru_cache(maxsize=64)
def _tokenized(task: str, split: str, seq_len: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(inputs, targets) token arrays of a task split, trimmed + EOS exactly as its PPL batches
    (seqio's get_dataset with the same lengths), in file order; cached: every run of a study
    evaluates the same test sets."""
    lengths = finetune_lengths(seq_len, INPUT_FRACTION)
    dataset = seqio.get_mixture_or_task(check_task(task)).get_dataset(
        sequence_length=lengths, split=split, shuffle=False, num_epochs=1, try_in_mem_cache=False)
    raw = data_tasks.raw_examples(task, split)
    inputs, targets = [], []
    for index, example in enumerate(dataset.as_numpy_iterator()):
        if example["inputs_pretokenized"].decode() != raw[index]["inputs"]:
            raise RuntimeError(f"task {task!r} split {split!r}: dataset order differs from raw_examples at {index}")
        inputs.append(np.asarray(example["inputs"], np.int32))
        targets.append(np.asarray(example["targets"], np.int32))
    return tuple(inputs), tuple(targets)


def task_prompts(task: str, split: str, *, seq_len: int) -> tuple[list[np.ndarray], list[dict[str, str]]]:
    """Tokenized inputs (trimmed + EOS, as in the PPL batches) and the raw examples, in file order."""
    return list(_tokenized(task, split, seq_len)[0]), data_tasks.raw_examples(task, split)


def likelihood_batches(task: str, split: str, *, batch_size: int, seq_len: int) -> list[dict[str, np.ndarray]]:
    """Prefix-LM batches with one example per row (what seqio's PrefixLMFeatureConverter makes of it,
    unpacked): token PPL equals that of data.pipeline.eval_batches' packed rows, and building them
    from the cached tokens avoids a packing pipeline per evaluation. Short last batch: empty rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs, targets = _tokenized(task, split, seq_len)
    return rows.batches(list(zip(inputs, targets)), batch_size=batch_size, seq_len=seq_len, pack=False)


def greedy_decode(model: nnx.Module, prompts: Sequence[np.ndarray], *, batch_size: int, max_new_tokens: int,
                  prompt_width: int | None = None, mesh: Mesh | None = None) -> list[list[int]]:
    """Greedy continuations (up to, not including, EOS) of `prompts` (inputs ending in EOS).

    Each row reads [0] + prompt, bidirectionally, as prefix-LM training does. Rows are padded to
    prompt_width + 1 and the last batch with dummy rows, so one compiled program serves a task.
    With `mesh` (the model placed on it) rows are split over its data axes (model.decode.generate).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    width = 1 + (prompt_width or max(len(p) for p in prompts))
    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        tokens = np.zeros((batch_size, width), np.int32)
        lengths = np.ones((batch_size,), np.int32)
        for row, prompt in enumerate(chunk):
            tokens[row, 1:1 + len(prompt)] = prompt
            lengths[row] = 1 + len(prompt)
        generated = generate(model, tokens, lengths, max_new_tokens=max_new_tokens, eos_id=EOS_ID,
                             prefix_bidirectional=True, mesh=mesh)
        for row in range(len(chunk)):
            ids = generated[row].tolist()
            outputs.append(ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids)
    return outputs


# ----------------------------------------------------------------------------- evaluation


def evaluate_task(
    model: nnx.Module,
    task: str,
    *,
    split: str = "test",
    batch_size: int = 8,
    seq_len: int = 128,
    max_examples: int | None = None,
    decode: bool = True,
    max_new_tokens: int = 64,
    stratum: str | None = None,
    learned_metrics: Sequence[str] | None = None,
    keep_outputs: bool = False,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Test PPL / log-PPL / mean token log-likelihood (target tokens) and, with decode, BLEU + chrF
    (mt_*) or ROUGE-L (summarize_*) of greedy outputs, their signatures and the example count.

    learned_metrics: e.g. ("comet",) (default for mt_*); skipped with a one-line notice when not
    installed. keep_outputs adds "hypotheses" and "references". `mesh`: the mesh the model's
    params are placed on (a finetuning run's); scoring and decoding split their rows over its data axes.
    """
    if split not in data_tasks.FINETUNE_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {data_tasks.FINETUNE_SPLITS}")
    check_task(task)
    if seq_len < 8 or batch_size < 1:
        raise ValueError(f"need seq_len >= 8 and batch_size >= 1, got seq_len={seq_len}, batch_size={batch_size}")
    check_vocabulary(model, task)
    kind = task_kind(task)
    name = eval_view(task, stratum=stratum, max_examples=max_examples)
    count = len(data_tasks.raw_examples(name, split))
    if count == 0:
        raise ValueError(f"task {task!r} split {split!r} (stratum {stratum!r}) has no examples")
    likelihood = score_batches(model, likelihood_batches(name, split, batch_size=batch_size, seq_len=seq_len),
                               mesh=mesh)
    result: dict[str, Any] = {
        "ppl": likelihood.ppl, "log_ppl": likelihood.log_ppl,
        "mean_log_likelihood": likelihood.mean_log_likelihood, "target_tokens": int(likelihood.total_weight),
        "bleu": None, "chrf": None, "rouge_l": None, "signatures": {}, "examples": count,
    }
    if not decode:
        return result
    prompts, raw = task_prompts(name, split, seq_len=seq_len)
    width = finetune_lengths(seq_len, INPUT_FRACTION)["inputs"]
    outputs = greedy_decode(model, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            prompt_width=width, mesh=mesh)
    vocabulary = task_vocabulary(name)
    hypotheses = [vocabulary.decode(ids) for ids in outputs]
    references = [e["reference"] for e in raw]
    include = ("bleu", "chrf") if kind == "mt" else ("rouge_l",)
    learned = (("comet",) if kind == "mt" else ()) if learned_metrics is None else tuple(learned_metrics)
    scores, signatures = metrics.generation_metrics(
        hypotheses, references, target_lang=target_language(task), sources=[e["source"] for e in raw],
        include=include, learned=learned)
    result.update(scores)
    result["signatures"] = signatures
    if keep_outputs:
        result["hypotheses"], result["references"] = hypotheses, references
    return result


# ----------------------------------------------------------------------------- zero-shot


def zero_shot_targets(task: str) -> dict[str, tuple[str, str, str | None]]:
    """Related tasks a model finetuned on `task` is evaluated on without training: name ->
    (task, split, stratum or None).

    - The reverse translation direction (mt_en_de -> "mt_de_en" on its test split).
    - The out-of-domain stratum of the test set: every test stratum other than the dominant one
      of the task's train split. The En-De train split is ~78% software (UI / documentation
      strings) and ~22% everyday sentences (dictionary examples), and Df-subsets keep those
      shares, so a model finetuned on it is finetuned on software text and "everyday" is its
      out-of-domain set; a task already restricted to "everyday" (eval_view) gets "software".
      En-Zh has only software text, so only the reverse direction applies.
    Summarization strata are languages (en/de in equal shares), not domains: no targets.
    """
    check_task(task)
    base, own_stratum, _ = _VIEWS.get(task, (task, None, None))
    if task_kind(base) != "mt":
        return {}
    targets: dict[str, tuple[str, str, str | None]] = {}
    original, vocabulary = data_tasks.VOCABULARY_VARIANTS.get(base, (base, None))
    match = _MT_RE.match(original)
    if match:
        reverse = f"{match['family']}_{match['tgt']}_{match['src']}{match['test'] or ''}"
        if reverse in data_tasks.FINETUNE_EXAMPLES:
            targets[reverse] = (data_tasks.with_vocabulary(reverse, vocabulary), "test", None)
    if base in data_tasks.STREAMED:  # no domain strata (and the train split is not read into memory)
        return targets
    if own_stratum is not None:
        dominant = own_stratum
    else:
        train = [e["stratum"] for e in data_tasks.raw_examples(base, "train")]
        names, counts = np.unique(train, return_counts=True)
        dominant = str(names[np.argmax(counts)])
    for stratum in sorted({e["stratum"] for e in data_tasks.raw_examples(base, "test")} - {dominant, ""}):
        targets[stratum] = (base, "test", stratum)
    return targets


def evaluate_zero_shot(model: nnx.Module, task: str, **kwargs: Any) -> dict[str, float]:
    """evaluate_task on every zero_shot_targets(task); flat {"mt_de_en.bleu": .., "everyday.log_ppl": ..}.

    kwargs are evaluate_task's (a `split` given here replaces each target's split).
    """
    kwargs.pop("stratum", None)
    kwargs.pop("keep_outputs", None)
    split_override = kwargs.pop("split", None)
    flat: dict[str, float] = {}
    for name, (target, split, stratum) in zero_shot_targets(task).items():
        result = evaluate_task(model, target, split=split_override or split, stratum=stratum, **kwargs)
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{name}.{key}"] = float(value)
    return flat
