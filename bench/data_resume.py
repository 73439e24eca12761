"""Time to resume the pretraining data at a late step: replaying every earlier batch (what a resume
without a saved position costs) against restoring the saved iterator position (O(1)).

  python bench/data_resume.py [--step 100000] [--batch_size 8] [--seq_len 128] [--corpus aligned]

Replays to --step once (the slow part, minutes), saves the position, then restores it in a fresh
pipeline and checks the next batches are identical to the replay's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from data import pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step", type=int, default=100_000)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--corpus", default="aligned")
    parser.add_argument("--check_batches", type=int, default=3)
    args = parser.parse_args(argv)
    common = dict(batch_size=args.batch_size, seq_len=args.seq_len, seed=0)
    started = time.perf_counter()
    replayed = pipeline.pretrain_batches(args.corpus, start_step=args.step - 1, **common)
    next(replayed)  # batch --step (1-based); the skip happens lazily, on the first batch
    replay_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "position"
        started = time.perf_counter()
        replayed.save(state)  # the position after batch --step, as a checkpoint at that step records it
        save_s = time.perf_counter() - started
        state_bytes = sum(p.stat().st_size for p in state.rglob("*") if p.is_file())
        expected = [next(replayed) for _ in range(args.check_batches)]
        started = time.perf_counter()
        restored = pipeline.pretrain_batches(args.corpus, state=state, **common)
        got = [next(restored) for _ in range(args.check_batches)]
        restore_s = time.perf_counter() - started
    identical = all(np.array_equal(a[k], b[k]) for a, b in zip(expected, got) for k in a)
    print(json.dumps({"step": args.step, "batch": [args.batch_size, args.seq_len], "corpus": args.corpus,
                      "replay_s": round(replay_s, 1), "save_s": round(save_s, 2), "restore_s": round(restore_s, 2),
                      "state_bytes": state_bytes, "identical_next_batches": identical}))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
