"""Training checkpoints from the command line.

  python -m checkpoints list --workdir=DIR [--json]     step, tokens, dev loss, checksums checked
  python -m checkpoints export --workdir=DIR (--step=N | --tokens=T) --out=PATH
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from checkpoints.exports import CONFIG_FILE, PARAMS_DIR, SAFETENSORS_FILE, export_checkpoint
from checkpoints.store import list_checkpoints


def print_listing(rows: list[dict]) -> None:
    print(f"{'kind':<13}{'step':>8}{'tokens':>14}{'dev_loss':>10}{'dev_ppl':>10}  {'checksums':<10}path")
    for row in rows:
        if "error" in row:
            print(f"{row['kind']:<13}{row['step']:>8}  CORRUPT: {row['error'][:300]}")
            continue
        dev = row["dev_loss"]
        dev_s = f"{dev:10.4f}" if dev is not None else f"{'-':>10}"
        ppl_s = f"{math.exp(min(dev, 50)):10.2f}" if dev is not None else f"{'-':>10}"
        print(f"{row['kind']:<13}{row['step']:>8}{row['tokens']:>14}{dev_s}{ppl_s}  {row.get('checksums', '-'):<10}"
              f"{row['path']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m checkpoints", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="list checkpoints (step, tokens, dev loss), files checked against checksums")
    listing.add_argument("--workdir", required=True)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    export = sub.add_parser("export", help="export one checkpoint (orbax params, safetensors, config.json)")
    export.add_argument("--workdir", required=True)
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--step", type=int)
    which.add_argument("--tokens", type=int)
    export.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only notices
    if not Path(args.workdir).is_dir():
        print(f"error: --workdir {args.workdir} is not a directory", file=sys.stderr)
        return 2
    try:
        if args.command == "list":
            rows = list_checkpoints(args.workdir, verify=True)
            if args.json:
                for row in rows:
                    print(json.dumps(row))
            else:
                print_listing(rows)
            return 0
        out = export_checkpoint(args.workdir, args.out, step=args.step, tokens=args.tokens)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported to {out}: {PARAMS_DIR}/ (orbax), {SAFETENSORS_FILE}, {CONFIG_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
