"""SentencePiece vocabularies with T5's ids, trained seeded and deterministic per language pair.

Ids: pad=0, eos=1, unk=2, no bos, so `seqio.SentencePieceVocabulary(path, extra_ids=N)` works
unchanged; the N extra ids (the top of the id range) are the UL2 sentinels. The mode tokens
[NLU], [NLG], [S2S] are user-defined pieces, so each is always a single id.
"""
from __future__ import annotations

import argparse
import functools
import glob
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from data import corpora

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
PAIRS = ("en-de", "en-zh")
MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# 100 sentinels (T5's count) + 8092 pieces = 8192 ids in total: the demo models' vocab_size.
DEFAULT_EXTRA_IDS = 100
DEFAULT_VOCAB_SIZE = 8192


def vocab_path(pair: str, vocab_dir: str | os.PathLike | None = None) -> Path:
    """Path of the committed SentencePiece model for `pair`."""
    if pair not in PAIRS:
        raise ValueError(f"unknown language pair {pair!r}; valid pairs: {', '.join(PAIRS)}")
    return Path(vocab_dir or VOCAB_DIR) / f"{pair}.model"


def train_sentencepiece(
    texts: Iterable[str],
    model_path: str | os.PathLike,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    extra_ids: int = DEFAULT_EXTRA_IDS,
    seed: int = 0,
    character_coverage: float = 0.9995,
    max_sentences: int = 2_000_000,
) -> Path:
    """Train a unigram SentencePiece model whose total size with `extra_ids` is `vocab_size`.

    Deterministic: fixed RNG seed, one thread, input order as given. Written atomically.
    """
    pieces = vocab_size - extra_ids
    if extra_ids < 0 or pieces < len(MODE_TOKENS) + 3 + 1:
        raise ValueError(
            f"vocab_size={vocab_size} with extra_ids={extra_ids} leaves {pieces} pieces; "
            f"need vocab_size > extra_ids + {len(MODE_TOKENS) + 4}"
        )
    sentences = [t.strip() for t in texts if t and t.strip()]
    if not sentences:
        raise ValueError("no training text given to train_sentencepiece")
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences[:max_sentences]),
        model_writer=buffer,
        model_type="unigram",
        vocab_size=pieces,
        character_coverage=character_coverage,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        user_defined_symbols=list(MODE_TOKENS),
        shuffle_input_sentence=False,
        num_threads=1,
        max_sentence_length=8192,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    with tempfile.NamedTemporaryFile(dir=model_path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(buffer.getvalue())
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, model_path)
    return model_path


@functools.lru_cache(maxsize=None)
def _load(path: str, extra_ids: int):
    import seqio  # deferred: importing seqio pulls in tensorflow

    if not Path(path).exists():
        raise FileNotFoundError(
            f"SentencePiece model {path} not found; train it with `python -m data.vocab train`"
        )
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def get_vocabulary(pair: str = "en-de", *, extra_ids: int = DEFAULT_EXTRA_IDS, vocab_dir=None):
    """The pair's `seqio.SentencePieceVocabulary` (T5 ids; `extra_ids` sentinels at the top)."""
    return _load(str(vocab_path(pair, vocab_dir)), extra_ids)


def mode_token_id(vocabulary, token: str) -> int:
    """Id of a UL2 mode token ([NLU], [NLG], [S2S]); raises if the model lacks it."""
    if token not in MODE_TOKENS:
        raise ValueError(f"unknown mode token {token!r}; valid: {MODE_TOKENS}")
    piece_id = vocabulary.tokenizer.piece_to_id(token)
    if piece_id == UNK_ID:
        raise ValueError(f"vocabulary {vocabulary.sentencepiece_model_file} has no piece {token}")
    return piece_id


def sentinel_id(vocabulary, index: int) -> int:
    """Id of sentinel `index` (T5 convention: extra_id_0 is the largest id)."""
    if not 0 <= index < vocabulary.extra_ids:
        raise ValueError(f"sentinel index {index} outside [0, {vocabulary.extra_ids})")
    return vocabulary.vocab_size - 1 - index


def pretraining_text(pair: str) -> list[str]:
    """All pretraining text of a pair (aligned + misaligned monolingual corpora, every language)."""
    texts: list[str] = []
    for corpus in ("aligned", "misaligned"):
        texts.extend(corpora.load_monolingual(pair, corpus))
    return texts


def text_lines(pattern: str, max_lines: int) -> list[str]:
    """Up to max_lines non-empty lines of the text files matching `pattern` (files in sorted order)."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise ValueError(f"no text files match {pattern!r}")
    lines: list[str] = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines.extend(line.strip() for line in handle if line.strip())
        if len(lines) >= max_lines:
            break
    return lines[:max_lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train SentencePiece vocabularies: the per-pair ones of the "
                                                 "committed corpora, or one for your own text files.")
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS))
    parser.add_argument("--text_files", default=None, help="glob of your text files (one document per line)")
    parser.add_argument("--out", default=None, help="with --text_files: where to write the .model")
    parser.add_argument("--max_lines", type=int, default=2_000_000)
    parser.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument("--extra_ids", type=int, default=DEFAULT_EXTRA_IDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out_dir", default=str(VOCAB_DIR))
    args = parser.parse_args(argv)
    try:
        if args.text_files is not None:
            if not args.out:
                raise ValueError("--text_files needs --out (the .model path to write)")
            texts = text_lines(args.text_files, args.max_lines)
            path = train_sentencepiece(texts, args.out, vocab_size=args.vocab_size, extra_ids=args.extra_ids,
                                       seed=args.seed)
            print(f"trained on {len(texts)} lines of {args.text_files} -> {path}")
            return 0
        for pair in args.pairs:
            texts = pretraining_text(pair)
            coverage = 0.9995 if pair == "en-zh" else 0.9999
            path = train_sentencepiece(
                texts, vocab_path(pair, args.out_dir), vocab_size=args.vocab_size,
                extra_ids=args.extra_ids, seed=args.seed, character_coverage=coverage,
            )
            print(f"{pair}: trained on {len(texts)} texts -> {path}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
