"""Trajectory scoring speed per model size: per-token scoring (scored tokens/s) of the held-out
validation probe and 2-shot multiple-choice questions/s, after compilation (timed separately).
Randomly initialised weights: speed does not depend on them.

Usage: python bench/trajectory_scoring.py [--sizes=tiny,xs,s] [--num_sequences=64] [--questions=16] [--repeats=3]
"""
from __future__ import annotations

import argparse
import time

import jax
from flax import nnx

from eval import multiple_choice as mc
from eval import probes
from eval.token_scoring import TokenScorer, encode_rows, load_tokenizer, mode_id, text_score_fn
from model.sizes import get_config
from model.transformer import Transformer


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, best of `repeats` later calls)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return first, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,xs,s")
    parser.add_argument("--num_sequences", type=int, default=64)
    parser.add_argument("--prefix_tokens", type=int, default=16)
    parser.add_argument("--target_tokens", type=int, default=48)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tokenizer = load_tokenizer("en-de")
    probe = probes.validation_probe(tokenizer, probes.held_out_documents("en-de", "aligned"),
                                    num_sequences=args.num_sequences, prefix_tokens=args.prefix_tokens,
                                    target_tokens=args.target_tokens)
    features = encode_rows(probe.prefixes, probe.targets, seq_len=probe.seq_len, mode_id=mode_id(tokenizer))
    task = probes.translation_mc_tasks("en-de", num_questions=args.questions)[0]
    print(f"backend {jax.default_backend()} ({len(jax.devices())} device(s)); probe {probe.targets.size} scored tokens "
          f"in {len(probe.targets)} rows of {probe.seq_len}; MC task {task.name}: {len(task.examples)} questions x "
          f"{len(task.examples[0].choices)} choices, 2-shot")
    print(f"{'size':<6}{'params':>12}{'compile+1st s':>15}{'tokens/s':>12}{'MC compile+1st s':>18}{'questions/s':>13}")
    for size in args.sizes.split(","):
        config = get_config(size)
        scorer = TokenScorer(Transformer(config, rngs=nnx.Rngs(0)), batch_size=args.batch_size)
        first, best = timed(lambda: scorer.log_probs(features), args.repeats)
        score_fn = text_score_fn(scorer, tokenizer)
        mc_first, mc_best = timed(lambda: mc.score_multiple_choice(task, score_fn, num_shots=2,
                                                                    batch_size=args.batch_size), args.repeats)
        params = sum(v.size for v in jax.tree.leaves(scorer.params))
        print(f"{size:<6}{params:>12,}{first:>15.2f}{probe.targets.size / best:>12,.0f}{mc_first:>18.2f}"
              f"{len(task.examples) / mc_best:>13,.1f}")


if __name__ == "__main__":
    main()
