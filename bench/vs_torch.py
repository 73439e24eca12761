"""The project's train step against a PyTorch peer (eager and torch.compile) on the same shapes,
timed side by side: per size, alternating rounds of ours / torch eager / torch compiled (the
order rotates each round) with the float32 2048^3 matmul peak measured in every round.

  python bench/vs_torch.py --peer /path/torch_decoder.py [--torch_python /path/venv/bin/python]
      [--sizes xs s m l] [--rounds 3] [--steps 5] [--warmup_s 20] [--batch_size 32] [--seq_len 128]
      [--json OUT] [--attention auto|einsum|blockwise|dot_product|fused_cpu] [--remat ...]
      [--loss_chunk N] [--loss_positions auto|all|weighted]

Ours is the trainer's step (train.trainer.build_train_step: Adafactor, the default compute
options unless flags say otherwise) on synthetic packed prefix-LM batches; the peer is any file
defining `LM(V, d, L, H, ff)` (a decoder with the same shapes: MQA, RMSNorm, gated GELU, tied
embeddings), trained with Adam on causal LM batches by bench/torch_peer_worker.py, which runs
under --torch_python (torch's own virtualenv: torch is not a dependency of this project). The
peer file is not part of the project: pass its path. Without --peer, or when torch cannot be
imported, the torch columns are skipped with a message and ours is timed alone.

Prints, per size and round, tokens/s of each, then the median over rounds, the ratios
ours / eager and ours / compiled, the same-run matmul peak (best of the rounds) and our MFU
(PaLM model FLOPs / the peak of the same round, median over rounds). The machine is shared:
every row carries the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from model.methods import model_factory  # noqa: E402
from model.sizes import count_params, get_config  # noqa: E402
from train.metrics import flops_per_token_from_config, measure_matmul_peak  # noqa: E402
from train.partitioning import make_mesh  # noqa: E402
from train.state import init_state  # noqa: E402
from train.step import shard_batch  # noqa: E402
from train.synthetic import synthetic_batch  # noqa: E402
from train.trainer import TrainConfig, build_train_step  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peer_worker.py")


class Ours:
    """The trainer's jitted step on one size, compiled and warmed, timed `count` steps at a time."""

    def __init__(self, name: str, *, batch_size: int, seq_len: int, vocab_size: int, **compute):
        self.config = get_config(name, vocab_size=vocab_size)
        counts = count_params(self.config)
        self.flops_per_token = flops_per_token_from_config(self.config.to_dict(), counts["non_embedding"], seq_len)
        self.params = counts["total"]
        mesh = make_mesh(devices=jax.devices()[:1])
        train_config = TrainConfig(batch_size=batch_size, seq_len=seq_len, num_steps=1000, prng_impl="rbg",
                                   **compute)
        factory = model_factory(self.config)
        program = build_train_step(train_config, factory, mesh, dropout=False)
        self.state, self.rest = init_state(factory, program.optimizer, program.parts, 0, "rbg")
        self.step_fn = program.step_fn
        self.batches = [shard_batch(synthetic_batch(i, rows=batch_size, seq_len=seq_len, vocab_size=vocab_size,
                                                    seed=0), mesh) for i in range(4)]
        self.step = 0
        start = time.perf_counter()
        self.run(2)
        self.warm_s = time.perf_counter() - start

    def run(self, count: int) -> list[float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            self.state, metrics = self.step_fn(self.state, self.rest, self.batches[self.step % 4], np.int32(self.step))
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
            self.step += 1
        self.loss = float(metrics["loss"])
        return times


class Peer:
    """bench/torch_peer_worker.py in a subprocess under torch's python, eager and compiled steps warm."""

    def __init__(self, torch_python: str, peer: str, config, *, batch_size: int, seq_len: int):
        args = [torch_python, WORKER, peer, str(config.vocab_size), str(config.d_model), str(config.num_layers),
                str(config.num_heads), str(config.d_ff), str(seq_len), str(batch_size)]
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._answer()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the torch peer worker exited (code {self.process.wait()}); see its stderr above")
        return json.loads(line)

    def run(self, kind: str, count: int) -> list[float]:
        self.process.stdin.write(f"{kind} {count}\n")
        self.process.stdin.flush()
        return self._answer()["step_s"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait()


def torch_available(torch_python: str) -> str | None:
    """None when `torch_python` can import torch, else why not."""
    try:
        result = subprocess.run([torch_python, "-c", "import torch"], capture_output=True, text=True, timeout=300)
    except OSError as err:
        return f"cannot run {torch_python}: {err}"
    return None if result.returncode == 0 else f"{torch_python} cannot import torch"


def bench_size(name: str, args, compute: dict, with_peer: bool) -> dict:
    tokens = args.batch_size * args.seq_len
    ours = Ours(name, batch_size=args.batch_size, seq_len=args.seq_len, vocab_size=args.vocab_size, **compute)
    peer = None
    if with_peer:
        peer = Peer(args.torch_python, args.peer, ours.config, batch_size=args.batch_size, seq_len=args.seq_len)
        print(f"  {name:>3} torch {peer.info['torch']}, {peer.info['threads']} threads, {peer.info['params']:,} params "
              f"(ours {ours.params:,}); warm-up incl. compile {peer.info['warm_s']['compiled']:.0f} s", flush=True)
    kinds = ["ours"] + (["eager", "compiled"] if peer else [])

    def run(kind: str, count: int) -> list[float]:
        return ours.run(count) if kind == "ours" else peer.run(kind, count)

    for kind in kinds:  # untimed steps until each side runs at its steady speed
        start = time.perf_counter()
        while time.perf_counter() - start < args.warmup_s:
            run(kind, 1)
    rounds = []
    try:
        for r in range(args.rounds):
            row = {"peak": measure_matmul_peak(size=2048, repeats=3, devices=jax.devices()[:1])}
            for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:  # rotate who goes first
                row[kind] = tokens / float(np.median(run(kind, args.steps)))
            row["load"] = os.getloadavg()[0]
            rounds.append(row)
            cells = "  ".join(f"{k} {row[k]:>7,.0f}" for k in kinds)
            mfu = row["ours"] * ours.flops_per_token / row["peak"]
            print(f"  {name:>3} round {r + 1}: {cells} tokens/s  peak {row['peak'] / 1e9:6.1f} GFLOP/s  "
                  f"MFU {100 * mfu:4.1f}%  load {row['load']:.2f}", flush=True)
    finally:
        if peer:
            peer.close()
    result = {"size": name, "params": ours.params, "tokens_per_step": tokens, "rounds": rounds,
              "final_loss": ours.loss, "flops_per_token": ours.flops_per_token,
              "peak_flops": max(row["peak"] for row in rounds)}
    for kind in kinds:
        result[kind] = float(np.median([row[kind] for row in rounds]))
    for row in rounds:  # MFU against the peak measured in the same round
        row["mfu"] = row["ours"] * ours.flops_per_token / row["peak"]
    result["mfu"] = float(np.median([row["mfu"] for row in rounds]))
    result["mfu_vs_best_peak"] = result["ours"] * ours.flops_per_token / result["peak_flops"]
    if peer:
        result["torch_params"] = peer.info["params"]
        result["torch_version"] = peer.info["torch"]
        result["torch_threads"] = peer.info["threads"]
        result["vs_eager"] = result["ours"] / result["eager"]
        result["vs_compiled"] = result["ours"] / result["compiled"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", default=None, help="path of the torch peer model file (defines LM)")
    parser.add_argument("--torch_python", default=sys.executable, help="a python that can import torch")
    parser.add_argument("--sizes", nargs="+", default=["xs", "s", "m", "l"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each per round (median taken)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--remat", default="none")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--loss_chunk", type=int, default=0)
    parser.add_argument("--loss_positions", default="auto", help="auto / all / weighted (model.compute)")
    parser.add_argument("--warmup_s", type=float, default=20.0,
                        help="untimed steps of each side for this long first: on this VM the torch peer's "
                             "steps slowed from 0.7 to 4.8 s and back within its first ~25 s (size m)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    compute = dict(remat=args.remat, attention=args.attention, loss_chunk=args.loss_chunk,
                   loss_positions=args.loss_positions)
    why_not = "no --peer given" if args.peer is None else torch_available(args.torch_python)
    if args.peer is not None and not os.path.isfile(args.peer):
        why_not = f"--peer {args.peer} is not a file"
    if why_not:
        print(f"torch peer skipped: {why_not} (install torch in its own virtualenv and pass "
              f"--peer PATH --torch_python VENV/bin/python)")
    print(f"devices: {jax.devices()}  batch {args.batch_size} x {args.seq_len}  compute {compute}  "
          f"load average {os.getloadavg()}", flush=True)
    results = []
    for name in args.sizes:
        results.append(bench_size(name, args, compute, with_peer=why_not is None))
    print(f"\n{'size':>4} {'ours tok/s':>10} {'eager':>8} {'compiled':>9} {'/eager':>7} {'/compiled':>9} "
          f"{'peak GF/s':>9} {'MFU':>6} {'MFU/best peak':>13}")
    for row in results:
        torch_cells = (f"{row['eager']:>8,.0f} {row['compiled']:>9,.0f} {row['vs_eager']:>6.2f}x "
                       f"{row['vs_compiled']:>8.2f}x" if "eager" in row else f"{'-':>8} {'-':>9} {'-':>7} {'-':>9}")
        print(f"{row['size']:>4} {row['ours']:>10,.0f} {torch_cells} {row['peak_flops'] / 1e9:>9.1f} "
              f"{100 * row['mfu']:>5.1f}% {100 * row['mfu_vs_best_peak']:>12.1f}%")
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
