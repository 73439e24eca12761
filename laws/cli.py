"""`python -m laws fit FILE.csv --law NAME --x COL[,COL] --y COL ...`: fit, print, plot."""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

from . import datasets
from .bootstrap import bootstrap
from .fit import _jsonable, results_table
from .forms import LAWS, GRID_PRESETS
from .frame import _frame_holdout, _numeric, fit_frame, groups_of

__all__ = ["main", "build_parser", "read_table"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m laws", description="Fit scaling laws to a results table.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit one law per group of a CSV table")
    f.add_argument("file", help="results CSV, or bundled:NAME for a bundled dataset "
                                f"({', '.join(datasets.names())})")
    f.add_argument("--law", required=True, help=f"one of {sorted(LAWS)}")
    f.add_argument("--x", required=True, help="input column(s), comma separated (two for joint laws: X,Df)")
    f.add_argument("--y", required=True, help="target column (loss, log-PPL, BLEU, ...)")
    f.add_argument("--by", default=None, help="column(s) to fit separately per value (e.g. method)")
    f.add_argument("--residual", default="log", choices=["log", "raw"],
                   help="Huber on log(prediction) - log(y) (Hoffmann) or prediction - y (Zhang)")
    f.add_argument("--delta", type=float, default=1e-3, help="Huber delta (default 1e-3)")
    f.add_argument("--grid", default="default", help=f"init grid: default or one of {sorted(GRID_PRESETS)}")
    f.add_argument("--holdout", default="max",
                   help="held-out points: max (largest value of each input), none, max:COL, or COL=VALUE")
    f.add_argument("--bootstrap", type=int, default=0, metavar="N", help="N bootstrap resamples (0: none)")
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    f.add_argument("--json", action="store_true", help="one JSON object per fit instead of a table")
    f.add_argument("--plot", default=None, metavar="OUT.png", help="save fitted curves + residuals as PNG")
    f.add_argument("--where", default=None, metavar="QUERY", help="pandas query to select rows first")
    return p


def read_table(spec: str) -> pd.DataFrame:
    """A CSV path, or bundled:NAME."""
    if spec.startswith("bundled:"):
        return datasets.load(spec.split(":", 1)[1])
    if not os.path.exists(spec):
        raise ValueError(f"file {spec!r} does not exist")
    if os.path.isdir(spec):
        raise ValueError(f"{spec!r} is a directory; give a results CSV file (a study writes DIR/report/results.csv)")
    try:
        table = pd.read_csv(spec)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError) as exc:
        raise ValueError(f"cannot read {spec!r} as CSV: {exc}") from exc
    if table.empty:
        raise ValueError(f"{spec!r} has no rows (columns: {', '.join(map(str, table.columns)) or 'none'}); "
                         "nothing to fit: run the study first, or check the file")
    return table


def run_fit(args) -> int:
    df = read_table(args.file)
    if args.where:
        try:
            df = df.query(args.where)
        except Exception as exc:  # pandas raises many types for a bad query
            raise ValueError(f"--where {args.where!r} is not a valid query on columns {list(df.columns)}: {exc}")
        if df.empty:
            raise ValueError(f"--where {args.where!r} selects no rows")
    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    results = fit_frame(df, args.law, args.x, args.y, by=args.by, residual=args.residual, delta=args.delta,
                        grid=args.grid, holdout=args.holdout)
    boots = {}
    if args.bootstrap:
        xs = args.x.split(",")
        for (labels, sub), r in zip(groups_of(df, args.by), results):
            X = np.column_stack([_numeric(sub, c) for c in xs])
            mask = np.asarray(_frame_holdout(sub, args.holdout, xs), bool)
            boots[id(r)] = bootstrap(r, X, _numeric(sub, args.y), n_resamples=args.bootstrap, seed=args.seed,
                                     holdout=mask)
    if args.json:
        for r in results:
            d = r.to_dict()
            if id(r) in boots:
                d["bootstrap"] = {"n_resamples": args.bootstrap, "seed": args.seed,
                                  "n_converged": int(boots[id(r)].converged.sum()),
                                  "intervals": boots[id(r)].intervals().to_dict(orient="index")}
            print(json.dumps(_jsonable(d)))
    else:
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            print(results_table(results).to_string(index=False))
            for r in results:
                if id(r) in boots:
                    b = boots[id(r)]
                    print(f"\nbootstrap {r.group or ''} ({args.bootstrap} resamples, seed {args.seed}, "
                          f"{int(b.converged.sum())} converged), {int(b.level * 100)}% intervals:")
                    print(b.intervals().to_string())
    if args.plot:
        from .plots import plot_report  # matplotlib only when a plot is asked for: the CLI starts fast
        path = plot_report(df, results, args.x, args.y, args.plot, by=args.by, holdout=args.holdout)
        print(f"plot saved to {path}", file=sys.stderr)
    bad = [r for r in results if not r.converged]
    for r in bad:
        print(f"warning: fit {r.group or r.law} did NOT converge: {r.message}", file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_fit(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
