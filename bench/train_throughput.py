"""Training-step throughput (tokens/s) and MFU for the demo sizes, plus checkpoint save time.

  python bench/train_throughput.py [--sizes xs s m l] [--batch_size 32] [--seq_len 128]
      [--steps 10] [--profile_dir DIR] [--json OUT]
      [--scan_layers] [--remat none|full|save_matmuls]
      [--attention auto|einsum|blockwise|dot_product|fused_cpu] [--attention_block N]
      [--loss_chunk N] [--loss_positions auto|all|weighted] [--microbatches N]

The step is the trainer's (train.trainer.build_train_step); the last seven flags switch the
compute options (model.compute), so their CPU cost can be compared with the default path.

MFU = achieved model FLOP/s (PaLM formula: 6 x matmul params + attention) / the float32
2048^3 matmul FLOP/s measured in the same process just before and just after each size's
timed steps (the higher of the two: conservative when other jobs share the CPU). Runs on whatever devices JAX sees; use one CPU device (no XLA_FLAGS).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from model.methods import model_factory  # noqa: E402
from model.sizes import count_params, get_config  # noqa: E402
from checkpoints.store import CheckpointStore  # noqa: E402
from train.metrics import flops_per_token_from_config, measure_matmul_peak  # noqa: E402
from train.partitioning import make_mesh  # noqa: E402
from train.state import init_state  # noqa: E402
from train.step import shard_batch  # noqa: E402
from train.synthetic import synthetic_batch  # noqa: E402
from train.trainer import TrainConfig, build_train_step  # noqa: E402


def bench_size(name: str, *, batch_size: int, seq_len: int, steps: int, vocab_size: int,
               profile_dir: str | None, save_repeats: int, scan_layers: bool = False, **compute) -> dict:
    config = get_config(name, vocab_size=vocab_size).replace(scan_layers=scan_layers)
    counts = count_params(config)
    flops_per_token = flops_per_token_from_config(config.to_dict(), counts["non_embedding"], seq_len)
    mesh = make_mesh(devices=jax.devices()[:1])
    train_config = TrainConfig(batch_size=batch_size, seq_len=seq_len, num_steps=1000, prng_impl="rbg", **compute)
    factory = model_factory(config)
    program = build_train_step(train_config, factory, mesh, dropout=False)
    state, rest = init_state(factory, program.optimizer, program.parts, 0, "rbg")
    step_fn = program.step_fn
    batches = [shard_batch(synthetic_batch(i, rows=batch_size, seq_len=seq_len, vocab_size=vocab_size, seed=0),
                           mesh) for i in range(4)]
    compile_start = time.perf_counter()
    state, metrics = step_fn(state, rest, batches[0], np.int32(0))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - compile_start
    state, metrics = step_fn(state, rest, batches[1], np.int32(1))  # warm
    jax.block_until_ready(metrics)
    peaks = [measure_matmul_peak(size=2048, repeats=3, devices=jax.devices()[:1])]
    if profile_dir:
        os.makedirs(os.path.join(profile_dir, name), exist_ok=True)
        jax.profiler.start_trace(os.path.join(profile_dir, name))
    times = []
    for i in range(steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, rest, batches[i % 4], np.int32(2 + i))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    if profile_dir:
        jax.profiler.stop_trace()
    peaks.append(measure_matmul_peak(size=2048, repeats=3, devices=jax.devices()[:1]))
    peak = max(peaks)  # conservative on a shared CPU: the best matmul rate seen around the steps
    step_s = float(np.median(times))
    tokens_per_s = batch_size * seq_len / step_s
    save_s = []
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(tmp, keep_latest=save_repeats + 1)
        for i in range(save_repeats):
            start = time.perf_counter()
            store.save(i + 1, state, {"step": i + 1}, kind="latest")
            save_s.append(time.perf_counter() - start)
        store.close()
    return {
        "size": name, "params_total": counts["total"], "params_non_embedding": counts["non_embedding"],
        "batch_size": batch_size, "seq_len": seq_len, "step_s_median": step_s,
        "step_s_min": float(np.min(times)), "tokens_per_s": tokens_per_s,
        "model_flops_per_token": flops_per_token, "achieved_flops": tokens_per_s * flops_per_token,
        "matmul_peak_flops": peak, "matmul_peaks_measured": peaks, "mfu": tokens_per_s * flops_per_token / peak,
        "mfu_best_step": batch_size * seq_len / float(np.min(times)) * flops_per_token / peak,
        "compile_s": compile_s, "checkpoint_save_s": float(np.median(save_s)),
        "final_loss": float(metrics["loss"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["xs", "s", "m", "l"])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--save_repeats", type=int, default=3)
    parser.add_argument("--profile_dir", default=None, help="write a jax.profiler trace per size here")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--scan_layers", action="store_true")
    parser.add_argument("--remat", default="none")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--attention_block", type=int, default=512)
    parser.add_argument("--loss_chunk", type=int, default=0)
    parser.add_argument("--loss_positions", default="auto", help="auto / all / weighted (model.compute)")
    parser.add_argument("--microbatches", type=int, default=1)
    args = parser.parse_args(argv)
    features = dict(scan_layers=args.scan_layers, remat=args.remat, attention=args.attention,
                    attention_block=args.attention_block, loss_chunk=args.loss_chunk, microbatches=args.microbatches,
                    loss_positions=args.loss_positions)
    print(f"devices: {jax.devices()}  load average: {os.getloadavg()}  features: {features}")
    rows = []
    header = (f"{'size':>4} {'params':>10} {'step s':>8} {'tokens/s':>10} {'GFLOP/s':>8} {'peak':>8} "
              f"{'MFU':>6} {'MFU best':>8} {'ckpt s':>7}")
    print(header)
    for name in args.sizes:
        row = bench_size(name, batch_size=args.batch_size, seq_len=args.seq_len, steps=args.steps,
                         vocab_size=args.vocab_size, profile_dir=args.profile_dir, save_repeats=args.save_repeats,
                         **features)
        rows.append(row)
        print(f"{name:>4} {row['params_total']:>10,} {row['step_s_median']:>8.3f} {row['tokens_per_s']:>10,.0f} "
              f"{row['achieved_flops'] / 1e9:>8.1f} {row['matmul_peak_flops'] / 1e9:>8.1f} "
              f"{100 * row['mfu']:>5.1f}% {100 * row['mfu_best_step']:>7.1f}% {row['checkpoint_save_s']:>7.3f}",
              flush=True)
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
