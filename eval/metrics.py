"""Text and likelihood metrics: corpus BLEU / chrF (sacrebleu), ROUGE-L (rouge-score), token PPL.

Every string metric is on sacrebleu's 0-100 scale and comes with a signature string that
says exactly how it was computed, so numbers from different runs are comparable only when
their signatures match. Learned metrics (COMET, BLEURT) are optional: without their
packages or model files the code logs one line and the other metrics carry on.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import unicodedata
from typing import Any, Mapping, Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

logger = logging.getLogger(__name__)

# sacrebleu's own choice of BLEU tokenizer per target language; everything else uses 13a.
_BLEU_TOKENIZER_BY_LANG = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}
ROUGE_TOKENIZERS = ("unicode", "default")


@dataclasses.dataclass(frozen=True)
class CorpusScore:
    """A corpus-level score (0-100) and the signature string that reproduces it."""

    name: str
    score: float
    signature: str


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise ValueError("hypotheses and references must be sequences of strings, not one string")
    hyps, refs = list(hypotheses), list(references)
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} references; they must pair up")
    if not hyps:
        raise ValueError("no hypotheses to score: an empty corpus has no BLEU/chrF/ROUGE")
    for name, items in (("hypotheses", hyps), ("references", refs)):
        bad = next((i for i, s in enumerate(items) if not isinstance(s, str)), None)
        if bad is not None:
            raise ValueError(f"{name}[{bad}] is {type(items[bad]).__name__}, expected str")
    return hyps, refs


def bleu_tokenizer_for(target_lang: str | None) -> str:
    """sacrebleu's recommended BLEU tokenizer for a target language ('zh' for Chinese, else '13a')."""
    return _BLEU_TOKENIZER_BY_LANG.get((target_lang or "").lower(), "13a")


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    target_lang: str | None = None,
    tokenize: str | None = None,
) -> CorpusScore:
    """Corpus BLEU with sacrebleu (one reference per hypothesis); tokenizer from target_lang unless given."""
    hyps, refs = _check_pairs(hypotheses, references)
    tokenizer = tokenize or bleu_tokenizer_for(target_lang)
    if tokenizer not in sacrebleu.BLEU.TOKENIZERS:
        raise ValueError(f"unknown BLEU tokenizer {tokenizer!r}; valid: {sorted(sacrebleu.BLEU.TOKENIZERS)}")
    metric = sacrebleu.BLEU(tokenize=tokenizer, trg_lang=(target_lang or ""))
    result = metric.corpus_score(hyps, [refs])
    return CorpusScore("bleu", float(result.score), metric.get_signature().format())


def corpus_chrf(
    hypotheses: Sequence[str], references: Sequence[str], *, word_order: int = 0
) -> CorpusScore:
    """Corpus chrF (word_order=0) or chrF++ (word_order=2) with sacrebleu; character-based, any script."""
    if word_order not in (0, 1, 2):
        raise ValueError(f"word_order must be 0 (chrF), 1 or 2 (chrF++), got {word_order!r}")
    hyps, refs = _check_pairs(hypotheses, references)
    metric = sacrebleu.CHRF(word_order=word_order)
    result = metric.corpus_score(hyps, [refs])
    name = "chrf" if word_order == 0 else "chrf" + "+" * word_order
    return CorpusScore(name, float(result.score), metric.get_signature().format())


# --- ROUGE-L --------------------------------------------------------------------------

# One token per CJK ideograph / kana / hangul syllable: these scripts do not separate
# words with spaces, so character units are the standard choice (as sacrebleu's zh
# tokenizer and multilingual ROUGE variants do).
_CJK_RANGES = (
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0x20000, 0x2FA1F),  # CJK Extensions B-F and supplement
)
_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


class UnicodeRougeTokenizer:
    """rouge-score tokenizer for any script: NFKC + casefold, words = runs of letters/digits, CJK per character.

    For ASCII text it yields exactly rouge-score's default tokens (lowercase [a-z0-9]+ runs,
    no stemming); unlike the default it keeps German umlauts/ß and Chinese characters, which
    the default tokenizer deletes (so Chinese ROUGE would be computed on nothing).
    """

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).casefold()
        tokens: list[str] = []
        for word in _WORD_RE.findall(text):
            run: list[str] = []
            for char in word:
                if _is_cjk(char):
                    if run:
                        tokens.append("".join(run))
                        run = []
                    tokens.append(char)
                else:
                    run.append(char)
            if run:
                tokens.append("".join(run))
        return tokens


def rouge_l(
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    tokenizer: str = "unicode",
    use_stemmer: bool = False,
) -> CorpusScore:
    """Mean sentence-level ROUGE-L F-measure (x100) with rouge-score's scorer.

    tokenizer="unicode" (default) handles German and Chinese (see UnicodeRougeTokenizer);
    tokenizer="default" is rouge-score's English-only tokenizer (ASCII letters and digits only),
    the only one where use_stemmer (Porter, English) is allowed.
    """
    if tokenizer not in ROUGE_TOKENIZERS:
        raise ValueError(f"unknown ROUGE tokenizer {tokenizer!r}; valid: {ROUGE_TOKENIZERS}")
    if use_stemmer and tokenizer != "default":
        raise ValueError("use_stemmer=True needs tokenizer='default': the Porter stemmer is English-only")
    hyps, refs = _check_pairs(hypotheses, references)
    custom = UnicodeRougeTokenizer() if tokenizer == "unicode" else None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer, tokenizer=custom)
    total = 0.0
    for hyp, ref in zip(hyps, refs):
        total += scorer.score(ref, hyp)["rougeL"].fmeasure  # rouge-score's order is (target, prediction)
    signature = f"rougeL|f-measure|agg:mean|tok:{tokenizer}|stem:{'yes' if use_stemmer else 'no'}|nrefs:1"
    return CorpusScore("rouge_l", 100.0 * total / len(hyps), signature)


# --- Token-level likelihood ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenLikelihood:
    """Weighted token statistics: the mean log-likelihood, its negation (log-PPL) and PPL."""

    total_log_likelihood: float
    total_weight: float

    @property
    def mean_log_likelihood(self) -> float:
        return self.total_log_likelihood / self.total_weight

    @property
    def log_ppl(self) -> float:
        return -self.mean_log_likelihood

    @property
    def ppl(self) -> float:
        return math.exp(self.log_ppl)


def _weighted(log_probs: Any, weights: Any) -> tuple[np.ndarray, np.ndarray]:
    lp = np.asarray(log_probs, dtype=np.float64)
    w = np.ones_like(lp) if weights is None else np.asarray(weights, dtype=np.float64)
    if lp.shape != w.shape:
        raise ValueError(f"log_probs shape {lp.shape} differs from weights shape {w.shape}")
    if np.any(w < 0):
        raise ValueError("weights must be >= 0 (loss weights: 1 on target tokens, 0 on padding/inputs)")
    counted = w > 0
    if np.any(counted & ~np.isfinite(lp)) or np.any(counted & (lp > 1e-4)):
        raise ValueError("log_probs of counted tokens must be finite and <= 0 (log-probabilities)")
    return np.where(counted, lp, 0.0), w


def token_likelihood(log_probs: Any, weights: Any = None) -> TokenLikelihood:
    """Token-level PPL from per-token log-probs and loss weights (0 = not counted), any shape."""
    lp, w = _weighted(log_probs, weights)
    total_weight = float(w.sum())
    if total_weight <= 0:
        raise ValueError("no counted tokens: weights sum to 0, perplexity is undefined")
    return TokenLikelihood(float((lp * w).sum()), total_weight)


class TokenLikelihoodAccumulator:
    """Streams batches of per-token log-probs into one corpus-level TokenLikelihood."""

    def __init__(self) -> None:
        self._log_likelihood = 0.0
        self._weight = 0.0

    def add(self, log_probs: Any, weights: Any = None) -> None:
        lp, w = _weighted(log_probs, weights)
        self._log_likelihood += float((lp * w).sum())
        self._weight += float(w.sum())

    def result(self) -> TokenLikelihood:
        if self._weight <= 0:
            raise ValueError("no counted tokens were added: perplexity is undefined")
        return TokenLikelihood(self._log_likelihood, self._weight)


def sequence_log_likelihoods(log_probs: Any, weights: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (sum of weighted log-probs, sum of weights) over the last axis; for per-sequence PPL."""
    lp, w = _weighted(log_probs, weights)
    return (lp * w).sum(axis=-1), w.sum(axis=-1)


def token_log_probs_from_logits(logits: Any, targets: Any) -> np.ndarray:
    """log softmax(logits)[target] per position (numpy, float64, numerically stable)."""
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets)
    if z.shape[:-1] != t.shape:
        raise ValueError(f"logits shape {z.shape} does not match targets shape {t.shape} + (vocab,)")
    if t.size and (t.min() < 0 or t.max() >= z.shape[-1]):
        raise ValueError(f"target ids must lie in [0, {z.shape[-1]}), got range [{t.min()}, {t.max()}]")
    peak = z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z - peak).sum(axis=-1)) + peak[..., 0]
    return np.take_along_axis(z, t[..., None].astype(np.int64), axis=-1)[..., 0] - log_norm


# --- Learned metrics (optional) -------------------------------------------------------

_NOTICED: set[str] = set()
DEFAULT_COMET_MODEL = "Unbabel/wmt22-comet-da"


def _notice_once(metric: str, why: str) -> None:
    if metric not in _NOTICED:
        _NOTICED.add(metric)
        logger.warning("%s skipped: %s; the other metrics carry on.", metric, why)


def comet_score(
    sources: Sequence[str],
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    model: str = DEFAULT_COMET_MODEL,
    batch_size: int = 16,
    gpus: int = 0,
) -> float | None:
    """System-level COMET (x100), or None with a one-line notice if unbabel-comet or its model is missing."""
    hyps, refs = _check_pairs(hypotheses, references)
    if len(sources) != len(hyps):
        raise ValueError(f"got {len(sources)} sources for {len(hyps)} hypotheses; they must pair up")
    try:
        import comet  # type: ignore[import-not-found]
    except ImportError:
        _notice_once("COMET", "unbabel-comet is not installed (pip install 'ftscale[learned-metrics]')")
        return None
    try:
        checkpoint = comet.download_model(model)
        scorer = comet.load_from_checkpoint(checkpoint)
    except Exception as error:  # no network / no cached model: say so, do not fail the evaluation
        _notice_once("COMET", f"model {model!r} could not be loaded ({type(error).__name__}: {error})")
        return None
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs)]
    output = scorer.predict(data, batch_size=batch_size, gpus=gpus, progress_bar=False)
    return 100.0 * float(output.system_score)


def bleurt_score(
    hypotheses: Sequence[str], references: Sequence[str], *, checkpoint: str | None = None
) -> float | None:
    """Mean BLEURT (x100) from a local checkpoint directory, or None with a one-line notice if unavailable."""
    hyps, refs = _check_pairs(hypotheses, references)
    if checkpoint is None:
        _notice_once("BLEURT", "no BLEURT checkpoint directory given (bleurt_checkpoint=...)")
        return None
    try:
        from bleurt import score as bleurt_lib  # type: ignore[import-not-found]
    except ImportError:
        _notice_once("BLEURT", "bleurt is not installed (pip install git+https://github.com/google-research/bleurt)")
        return None
    try:
        scorer = bleurt_lib.BleurtScorer(checkpoint)
    except Exception as error:
        _notice_once("BLEURT", f"checkpoint {checkpoint!r} could not be loaded ({type(error).__name__}: {error})")
        return None
    return 100.0 * float(np.mean(scorer.score(references=refs, candidates=hyps)))


# --- Everything for one set of generations ------------------------------------------


def generation_metrics(
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    target_lang: str | None = None,
    sources: Sequence[str] | None = None,
    include: Sequence[str] = ("bleu", "chrf", "rouge_l"),
    learned: Sequence[str] = (),
    comet_model: str = DEFAULT_COMET_MODEL,
    bleurt_checkpoint: str | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Compute the chosen metrics; returns ({name: score}, {name: signature}).

    Learned metrics ("comet", "bleurt") that are unavailable are left out after a one-line notice.
    """
    known = {"bleu", "chrf", "rouge_l"}
    unknown = [m for m in include if m not in known] + [m for m in learned if m not in ("comet", "bleurt")]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; valid: {sorted(known)} and learned comet, bleurt")
    scores: dict[str, float] = {}
    signatures: dict[str, str] = {}
    computed: list[CorpusScore] = []
    if "bleu" in include:
        computed.append(corpus_bleu(hypotheses, references, target_lang=target_lang))
    if "chrf" in include:
        computed.append(corpus_chrf(hypotheses, references))
    if "rouge_l" in include:
        computed.append(rouge_l(hypotheses, references))
    for item in computed:
        scores[item.name] = item.score
        signatures[item.name] = item.signature
    if "comet" in learned:
        if sources is None:
            raise ValueError("COMET needs the source sentences: pass sources=...")
        value = comet_score(sources, hypotheses, references, model=comet_model)
        if value is not None:
            scores["comet"], signatures["comet"] = value, f"comet|model:{comet_model}"
    if "bleurt" in learned:
        value = bleurt_score(hypotheses, references, checkpoint=bleurt_checkpoint)
        if value is not None:
            scores["bleurt"], signatures["bleurt"] = value, f"bleurt|checkpoint:{bleurt_checkpoint}"
    return scores, signatures


def summarize_signatures(signatures: Mapping[str, str]) -> str:
    """One line for logs and reports: 'bleu: <sig> ; chrf: <sig> ; ...'."""
    return " ; ".join(f"{name}: {sig}" for name, sig in sorted(signatures.items()))
