"""Do the paper's 1b..16b pretraining jobs fit, and on how few chips? AOT compilation for TPU
slices from this CPU host (python -m train.compile in a fresh process per configuration).

  python bench/paper_fit.py [--sizes 1b 2b 4b 8b 16b] [--search] [--json OUT]

Without --search: each size's gin file as it is (its own slice). With --search: for each size,
v5p slices from the smallest up, fully sharded over fsdp, with microbatches so that each chip
holds 4 sequences per microbatch; the first that fits is the smallest slice.
Prints a markdown table (the README's).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V5P_SLICES = ("v5p:2x2x1", "v5p:2x2x2", "v5p:2x2x4", "v5p:2x4x4", "v5p:4x4x4", "v5p:4x4x8", "v5p:4x8x8")
SEQUENCES_PER_MICROBATCH = 4


def compile_size(size: str, topology: str | None = None) -> dict:
    args = [sys.executable, "-m", "train.compile", f"--gin_file=gin_configs/pretrain/{size}.gin", "--json"]
    if topology:
        chips = math.prod(int(d) for d in topology.split(":")[1].split("x"))
        microbatches = max(1, 1024 // (chips * SEQUENCES_PER_MICROBATCH))
        args += [f"--topology={topology}", f"--gin_param=TOPOLOGY='{topology}'", f"--gin_param=FSDP={chips}",
                 f"--gin_param=MICROBATCHES={microbatches}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def row(r: dict) -> str:
    gib = 1024**3
    mesh = " x ".join(str(v) for v in r["mesh"].values())
    per_chip = f"{r['per_chip_bytes'] / gib:.1f}" if r["per_chip_bytes"] else "?"
    ratio = f"{r['compiled_flops'] / r['model_flops']:.2f}" if r.get("compiled_flops") else "-"
    return (f"| {r['model']} | {r['topology']} ({r['chips']} chips) | {mesh} | {r['sequences_per_chip']} "
            f"({r['microbatches']} microbatch{'es' if r['microbatches'] > 1 else ''}) | {r['remat']} | "
            f"{per_chip} / {r['hbm_bytes'] / gib:.0f} GiB{'' if r['fits'] else ' (does not fit)'} | {ratio} | "
            f"{r['compile_s']:.0f} s |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1b", "2b", "4b", "8b", "16b"])
    parser.add_argument("--search", action="store_true", help="find the smallest v5p slice each size fits")
    parser.add_argument("--json", default=None, help="also append every result as a JSON line here")
    args = parser.parse_args(argv)
    print("| size | slice | mesh (data x fsdp x tensor) | sequences per chip | remat | memory per chip / HBM "
          "| compiled / model FLOPs | compile |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for topology in (V5P_SLICES if args.search else (None,)):
            report = compile_size(size, topology)
            print(row(report), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(report) + "\n")
            if report["fits"]:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
