"""Per-token log-probs of text under a pretrained decoder, in the UL2 S-denoiser (prefix-LM) format.

A scored row is what S-denoising pretraining shows the model: inputs = [S2S] + prefix + EOS
(bidirectional), targets = the continuation (causal); only the continuation's tokens are
scored. One jitted program per model structure and batch shape: a `TokenScorer` swaps in the
parameters of another checkpoint of the same size without recompiling.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm
from flax import nnx

from data.rows import empty_rows, place_example
from data.vocab import EOS_ID, vocab_path
from model.functional import split_params
from model.loss import target_log_probs

MODE_TOKEN = "[S2S]"
_COMPILED: dict[Any, Callable] = {}


def encode_rows(prefixes: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *, seq_len: int,
                mode_id: int, eos_id: int = EOS_ID) -> dict[str, np.ndarray]:
    """seqio PrefixLM features [rows, seq_len] for (prefix, target) id lists, one per row:
    [mode] + prefix + EOS is the bidirectional prefix; prefixes are cut from the left to fit."""
    if len(prefixes) != len(targets):
        raise ValueError(f"{len(prefixes)} prefixes but {len(targets)} targets")
    out = empty_rows(len(prefixes), seq_len)
    for r, (prefix, target) in enumerate(zip(prefixes, targets)):
        target = [int(t) for t in target]
        if not target:
            raise ValueError(f"row {r} has an empty target: nothing to score")
        room = seq_len - len(target) - 2  # mode token and EOS around the prefix
        if room < 0:
            raise ValueError(f"row {r}: target of {len(target)} tokens does not fit seq_len={seq_len} (needs <= {seq_len - 2})")
        prefix = [int(t) for t in prefix][max(len(prefix) - room, 0):]
        place_example(out, r, 0, 1, [mode_id, *prefix, eos_id], target)
    return out


def _bucket(n: int, smallest: int) -> int:
    """The next power of two >= n (at least `smallest`): few distinct shapes, few compilations."""
    return max(smallest, 1 << max(n - 1, 0).bit_length())


def _compiled(graphdef: nnx.GraphDef) -> Callable:
    """jit(params, rest, batch, positions [B, K]) -> log p(target) at those positions; cached per structure.

    Logits are computed only at the scored positions: the output projection over the vocabulary
    dominates a small model's cost, and most positions of a row are prefix or padding.
    """
    if graphdef not in _COMPILED:

        @jax.jit
        def log_probs(params, rest, batch, positions):
            model = nnx.merge(graphdef, params, rest)
            hidden = model.hidden_and_cache(batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                                            batch["decoder_positions"], batch["decoder_causal_attention"], True)[0]
            hidden = jnp.take_along_axis(hidden[:, model.prompt_length:], positions[..., None], axis=1)
            logits = model.logits(hidden)
            targets = jnp.take_along_axis(batch["decoder_target_tokens"], positions, axis=1)
            return target_log_probs(logits, targets)

        _COMPILED[graphdef] = log_probs
    return _COMPILED[graphdef]


class TokenScorer:
    """Scores prefix-LM rows in fixed-size batches; `set_params` switches checkpoints of one size.

    Shapes are bucketed (length and scored tokens to powers of two, batch padded to batch_size)
    so a few compiled programs serve every probe and task.
    """

    def __init__(self, model: nnx.Module, *, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.graphdef, params, self.rest = split_params(model)
        self.params = nnx.to_pure_dict(params)
        self.config = model.config
        self.batch_size = batch_size
        self._fn = _compiled(self.graphdef)

    def set_params(self, params: dict) -> None:
        """Use another checkpoint's parameters (same structure: no recompilation)."""
        self.params = params

    def log_probs(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """float32 [rows, seq_len]: log p of each target token (0 on unscored positions)."""
        rows, seq_len = features["decoder_input_tokens"].shape
        out = np.zeros((rows, seq_len), np.float32)
        for start in range(0, rows, self.batch_size):
            chunk = {k: v[start:start + self.batch_size] for k, v in features.items()}
            n = chunk["decoder_input_tokens"].shape[0]
            scored = chunk["decoder_loss_weights"] > 0
            used = int(np.max(np.nonzero(chunk["decoder_segment_ids"].any(axis=0))[0], initial=0)) + 1
            length = min(_bucket(used, 32), seq_len)
            width = _bucket(int(scored.sum(axis=1).max()), 16)
            positions = np.zeros((self.batch_size, width), np.int32)
            for r in range(n):
                where = np.nonzero(scored[r])[0]
                positions[r, :len(where)] = where
            chunk = {k: np.concatenate([v[:, :length], np.zeros((self.batch_size - n, length), v.dtype)])
                     for k, v in chunk.items()}
            lp = np.asarray(self._fn(self.params, self.rest, chunk, positions))
            for r in range(n):
                where = np.nonzero(scored[r])[0]
                out[start + r, where] = lp[r, :len(where)]
        return out


def load_tokenizer(pair: str = "en-de"):
    """The pair's SentencePiece processor (T5 ids; no TensorFlow import)."""
    return spm.SentencePieceProcessor(model_file=str(vocab_path(pair)))


def mode_id(tokenizer) -> int:
    """Id of the S-denoiser mode token in this vocabulary."""
    piece = tokenizer.piece_to_id(MODE_TOKEN)
    if piece == tokenizer.unk_id():
        raise ValueError(f"vocabulary has no {MODE_TOKEN} piece: not a UL2 vocabulary of this project")
    return int(piece)


def text_score_fn(scorer: TokenScorer, tokenizer, *, seq_len: int = 256) -> Callable[[Sequence[tuple[str, str]]], list[np.ndarray]]:
    """An eval.multiple_choice ScoreFn: per-token log-probs of each continuation given its context."""
    mode = mode_id(tokenizer)
    seq_len = min(seq_len, scorer.config.max_len)

    def score(pairs: Sequence[tuple[str, str]]) -> list[np.ndarray]:
        prefixes = [tokenizer.encode(context) for context, _ in pairs]
        targets = [tokenizer.encode(continuation) for _, continuation in pairs]
        features = encode_rows(prefixes, targets, seq_len=seq_len, mode_id=mode)
        lp = scorer.log_probs(features)
        weights = features["decoder_loss_weights"] > 0
        return [lp[r][weights[r]].astype(np.float64) for r in range(len(pairs))]

    return score
