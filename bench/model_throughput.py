"""Forward+backward throughput and MFU of the demo model sizes on this machine.

MFU = achieved FLOP/s / peak FLOP/s, where achieved FLOPs per token = 6 * params +
12 * layers * heads * head_dim * seq_len (PaLM appendix B: weights + attention), and peak is
the FLOP/s of a large float32 matmul measured in the same run (interleaved with the model
timings, so a shared machine's load affects both alike).

    python bench/model_throughput.py                   # xs, s, m, l at seq len 128
    python bench/model_throughput.py --sizes m --batch_sizes 8,16,32,64
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from model.loss import target_log_probs  # noqa: E402
from model.sizes import count_params, get_config  # noqa: E402
from model.transformer import Transformer  # noqa: E402


def time_call(fn, *args, repeats: int) -> float:
    """Median seconds of fn(*args) after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(n: int, repeats: int) -> float:
    """FLOP/s of an n x n float32 matmul."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(1).normal(size=(n, n)), jnp.float32)
    return 2 * n**3 / time_call(jax.jit(jnp.matmul), a, b, repeats=repeats)


def train_step_fn(model: Transformer):
    """Jitted loss + gradient over all parameters (no optimizer: this measures the model)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, tokens):
        logits = nnx.merge(graphdef, params, rest)(tokens[:, :-1])
        return -jnp.mean(target_log_probs(logits, tokens[:, 1:]))

    step = jax.jit(jax.value_and_grad(loss))
    return lambda tokens: step(params, tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="xs,s,m,l")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch_sizes", default="32", help="comma-separated; each size is timed at each")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul_n", type=int, default=2048)
    parser.add_argument("--dtype", default="float32", help="activation dtype (params stay float32)")
    args = parser.parse_args(argv)

    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s), "
          f"{os.cpu_count()} CPUs), seq_len {args.seq_len}, {args.dtype}")
    header = (f"{'size':>5} {'params':>10} {'batch':>5} {'step ms':>9} {'tokens/s':>10} {'GFLOP/s':>9} "
              f"{'peak GFLOP/s':>12} {'MFU':>6}")
    print(header)
    print("-" * len(header))
    for name in args.sizes.split(","):
        config = get_config(name).replace(dtype=args.dtype, max_len=max(args.seq_len + 1, 512))
        params = count_params(config)["total"]
        with jax.threefry_partitionable(False):  # far faster random-init compiles on CPU
            model = Transformer(config, rngs=nnx.Rngs(0))
        step = train_step_fn(model)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            tokens = jnp.asarray(
                np.random.default_rng(0).integers(3, config.vocab_size, (batch, args.seq_len + 1)), jnp.int32
            )
            peak_before = matmul_peak(args.matmul_n, args.repeats)
            seconds = time_call(step, tokens, repeats=args.repeats)
            peak = (peak_before + matmul_peak(args.matmul_n, args.repeats)) / 2
            n_tokens = batch * args.seq_len
            flops_per_token = 6 * params + 12 * config.num_layers * config.num_heads * config.head_dim * args.seq_len
            achieved = flops_per_token * n_tokens / seconds
            print(f"{name:>5} {params:>10,} {batch:>5} {seconds * 1e3:>9.1f} {n_tokens / seconds:>10,.0f} "
                  f"{achieved / 1e9:>9.2f} {peak / 1e9:>12.2f} {achieved / peak:>6.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
