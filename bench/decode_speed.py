"""Greedy decoding speed: the KV cache (model.decode.generate) vs a full forward per new token.

  python bench/decode_speed.py [--size=m] [--batch=8] [--prompt_len=32] [--new_tokens=64]

Random-init weights (speed does not depend on them). Both paths are one jitted program each
(the no-cache one a lax.fori_loop of full forwards over a fixed-width buffer), run after a
warm-up call; prompts attend bidirectionally (prefix-LM) in both. EOS is disabled so every row
emits exactly new_tokens tokens, and the two token arrays must be identical. Prints JSON.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from model.decode import generate  # noqa: E402
from model.sizes import count_params, get_config  # noqa: E402
from model.transformer import Transformer  # noqa: E402


@functools.partial(jax.jit, static_argnames=("graphdef", "new_tokens"))
def _no_cache_greedy(graphdef, state, tokens, lengths, *, new_tokens):
    """Greedy decoding by recomputing the whole sequence for every token (no KV cache)."""
    model = nnx.merge(graphdef, state)
    batch, width = tokens.shape
    rows = jnp.arange(batch)
    slots = jnp.arange(width)[None, :]
    causal = (slots < lengths[:, None]).astype(jnp.int32)  # the prompt is the bidirectional prefix

    def body(step, buffer):
        segment_ids = (slots < (lengths + step)[:, None]).astype(jnp.int32)
        logits = model(buffer, segment_ids=segment_ids, causal_attention=causal)
        token = jnp.argmax(logits[rows, lengths + step - 1], axis=-1).astype(jnp.int32)
        return buffer.at[rows, lengths + step].set(token)

    buffer = jax.lax.fori_loop(0, new_tokens, body, tokens)
    return jax.vmap(lambda row, start: jax.lax.dynamic_slice(row, (start,), (new_tokens,)))(buffer, lengths)


def _timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    out = np.asarray(fn())  # warm-up: compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = np.asarray(jax.block_until_ready(fn()))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    config = get_config(args.size)
    model = Transformer(config, rngs=nnx.Rngs(jax.random.key(args.seed, impl="rbg")))
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(args.prompt_len // 2, args.prompt_len + 1, size=args.batch).astype(np.int32)
    lengths[0] = args.prompt_len
    prompts = np.zeros((args.batch, args.prompt_len), np.int32)
    for row, length in enumerate(lengths):
        prompts[row, :length] = rng.integers(3, config.vocab_size, size=length)

    kv_time, kv_tokens = _timed(lambda: generate(
        model, prompts, lengths, max_new_tokens=args.new_tokens, eos_id=-1, prefix_bidirectional=True),
        args.repeats)
    graphdef, state = nnx.split(model)
    buffer = jnp.asarray(np.pad(prompts, ((0, 0), (0, args.new_tokens))))
    full_time, full_tokens = _timed(lambda: _no_cache_greedy(
        graphdef, state, buffer, jnp.asarray(lengths), new_tokens=args.new_tokens), args.repeats)

    generated = args.batch * args.new_tokens
    report = {
        "size": args.size, "params": count_params(config), "batch": args.batch,
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "backend": jax.default_backend(),
        "kv_cache_tokens_per_s": generated / kv_time, "full_forward_tokens_per_s": generated / full_time,
        "kv_cache_s": kv_time, "full_forward_s": full_time, "speedup": full_time / kv_time,
        "identical_tokens": bool(np.array_equal(kv_tokens, full_tokens)),
        "mismatched_rows": int((kv_tokens != full_tokens).any(axis=1).sum()),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["identical_tokens"] else 1)
