"""Fixed token sets scored at every checkpoint: held-out validation text, its corrupted copies,
and the few-shot translation multiple-choice tasks, all from the committed corpora's held-out parts.

A `Probe` is N rows of (prefix, target) token ids of fixed lengths; the targets' tokens are the
(context, token) pairs whose per-token losses are tracked across training (Xia et al. 2023).
"""
from __future__ import annotations

import dataclasses
import hashlib
import zlib
from typing import Sequence

import numpy as np

from data import corpora
from eval import multiple_choice as mc

CORRUPTION_RATES = (0.2, 0.4, 0.6, 0.8, 1.0)
LANGUAGE_NAMES = {"en": "English", "de": "German", "zh": "Chinese"}  # the corpora's languages (as in data.tasks)


@dataclasses.dataclass(frozen=True)
class Probe:
    """N rows of prefix [N, P] and target [N, T] token ids; `kind` groups probes in the analysis."""

    name: str
    prefixes: np.ndarray
    targets: np.ndarray
    kind: str = "validation"

    def __post_init__(self) -> None:
        if self.prefixes.ndim != 2 or self.targets.ndim != 2 or len(self.prefixes) != len(self.targets):
            raise ValueError(f"probe {self.name!r}: prefixes {self.prefixes.shape} and targets {self.targets.shape} "
                             "must be 2-D with the same number of rows")
        if self.targets.shape[1] < 1:
            raise ValueError(f"probe {self.name!r} has no target tokens")

    @property
    def seq_len(self) -> int:
        return self.prefixes.shape[1] + self.targets.shape[1] + 2  # + mode token and EOS

    def fingerprint(self) -> str:
        """Hash of the token ids: stored scores are reused only for the identical probe."""
        digest = hashlib.sha1(self.name.encode())
        for array in (self.prefixes, self.targets):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array, dtype=np.int32).tobytes())
        return digest.hexdigest()[:16]


# data.tasks.VALIDATION_PERCENT / stable_percent, restated so that building probes does not import
# TensorFlow (data.tasks does); tests/eval/test_traj_scoring.py checks the two splits agree.
VALIDATION_PERCENT = 1


def held_out_documents(pair: str = "en-de", corpus: str = "aligned") -> list[str]:
    """The pretraining corpus's held-out validation documents (data.tasks' stable-hash split)."""
    return [text for text in corpora.load_monolingual(pair, corpus)
            if text.strip() and zlib.crc32(text.encode("utf-8")) % 100 < VALIDATION_PERCENT]


def validation_probe(tokenizer, documents: Sequence[str], *, num_sequences: int = 64, prefix_tokens: int = 16,
                     target_tokens: int = 48, name: str = "validation") -> Probe:
    """num_sequences chunks of prefix_tokens + target_tokens consecutive ids, evenly spaced over the documents' token stream."""
    if num_sequences < 1 or prefix_tokens < 1 or target_tokens < 1:
        raise ValueError(f"num_sequences, prefix_tokens and target_tokens must be >= 1, got "
                         f"{num_sequences}, {prefix_tokens}, {target_tokens}")
    stream = np.fromiter((t for doc in documents for t in tokenizer.encode(doc)), dtype=np.int32)
    width = prefix_tokens + target_tokens
    available = len(stream) // width
    if available < num_sequences:
        raise ValueError(f"held-out text gives {available} chunks of {width} tokens; num_sequences={num_sequences} "
                         "is too many (lower it or the lengths)")
    starts = np.linspace(0, available - 1, num_sequences).round().astype(int) * width
    chunks = np.stack([stream[s:s + width] for s in starts])
    return Probe(name, chunks[:, :prefix_tokens], chunks[:, prefix_tokens:], "validation")


def ordinary_ids(tokenizer) -> np.ndarray:
    """Ids of ordinary subwords (no pad/EOS/unk, no user-defined mode tokens, no sentinels)."""
    ids = [i for i in range(tokenizer.get_piece_size())
           if not (tokenizer.is_control(i) or tokenizer.is_unknown(i) or tokenizer.is_unused(i))
           and not tokenizer.id_to_piece(i).startswith("[")]
    return np.asarray(ids, dtype=np.int32)


def corrupted_probes(real: Probe, tokenizer, *, rates: Sequence[float] = CORRUPTION_RATES, num_sequences: int | None = None,
                     seed: int = 0) -> list[Probe]:
    """The real rows (first num_sequences) and copies with a fraction `rate` of their subwords replaced by random ones."""
    rows = slice(0, num_sequences)
    base = np.concatenate([real.prefixes[rows], real.targets[rows]], axis=1)
    split = real.prefixes.shape[1]
    vocabulary = ordinary_ids(tokenizer)
    out = [Probe("corrupt_0", base[:, :split], base[:, split:], "corrupted")]
    for rate in rates:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"corruption rate must be in (0, 1], got {rate!r}")
        rng = np.random.default_rng([seed, int(round(rate * 1000))])
        corrupted = base.copy()
        count = int(round(rate * base.shape[1]))
        for row in corrupted:
            where = rng.choice(base.shape[1], size=count, replace=False)
            row[where] = rng.choice(vocabulary, size=count)
        out.append(Probe(f"corrupt_{int(round(rate * 100))}", corrupted[:, :split], corrupted[:, split:], "corrupted"))
    return out


def corruption_rate(probe_name: str) -> float:
    """0.2 for "corrupt_20"."""
    return int(probe_name.rsplit("_", 1)[1]) / 100.0


def translation_mc_tasks(pair: str = "en-de", *, num_questions: int = 40, max_chars: int = 80, seed: int = 0) -> list[mc.MCTask]:
    """4-way 'pick the right translation' tasks both ways, from the pair's held-out dev parallel text."""
    if num_questions < 4:
        raise ValueError(f"num_questions must be >= 4 (4-way choices, 2-shot demonstrations), got {num_questions}")
    xx = pair.split("-")[1]
    examples = [e for e in corpora.load_parallel(pair, "dev") if len(e.en) <= max_chars and len(e.xx) <= max_chars]
    unique, seen = [], set()
    for e in examples:  # distinct sentences on both sides: one correct answer per question
        if e.en not in seen and e.xx not in seen:
            seen.update((e.en, e.xx))
            unique.append(e)
    if len(unique) < num_questions:
        raise ValueError(f"only {len(unique)} dev pairs of <= {max_chars} characters; num_questions={num_questions} is too many")
    chosen = [unique[i] for i in sorted(np.random.default_rng(seed).choice(len(unique), num_questions, replace=False))]
    en, other = LANGUAGE_NAMES["en"], LANGUAGE_NAMES.get(xx, xx)
    forward = mc.translation_task([(e.en, e.xx) for e in chosen], source_name=en, target_name=other, seed=seed)
    backward = mc.translation_task([(e.xx, e.en) for e in chosen], source_name=other, target_name=en, seed=seed)
    return [forward, backward]


def task_fingerprint(task: mc.MCTask, num_shots: int, seed: int) -> str:
    """Hash of a multiple-choice task's content and shot setting."""
    digest = hashlib.sha1(f"{task.name}|{num_shots}|{seed}|{task.prompt!r}".encode())
    for example in task.examples:
        digest.update(repr((example.input, example.choices, example.target_scores)).encode())
    return digest.hexdigest()[:16]
