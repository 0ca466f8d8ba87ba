"""The ``tfsidefuse analyze`` subcommand: figures and numbers of trained runs."""

from __future__ import annotations

import argparse
import sys


def add_analyze_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``analyze`` to the ``tfsidefuse`` subcommands; it runs :func:`run_analyze`."""
    p = subparsers.add_parser(
        "analyze",
        help="draw attention maps and ranks, bucketed metrics, embedding projections and curves of trained runs",
    )
    p.add_argument("--run", required=True, action="append", help="run directory of `tfsidefuse train` (repeatable)")
    p.add_argument("--out", required=True, help="output directory of the PNG files and analysis.json")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--examples", type=int, default=3, help="sequences drawn as attention heatmaps")
    p.add_argument("--rank-examples", type=int, default=64, help="sequences averaged in the attention rank")
    p.add_argument("--buckets", type=int, default=5, help="popularity and length buckets")
    p.add_argument("--k", type=int, default=10, help="cutoff of the HR@K and NDCG@K drawn per bucket")
    p.add_argument("--feature", default=None, help="item feature colouring the embedding projection")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative singular-value threshold of the rank")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled sequences")
    p.add_argument("--prepared-dir", default=None, help="prepared dataset, instead of the one in each config.yaml")
    p.set_defaults(fn=run_analyze)
    return p


def run_analyze(args: argparse.Namespace) -> int:
    """Runs ``analyze`` for parsed arguments and prints the files written.

    Returns 0, or 2 after printing the error for a missing run or dataset and for bad values.
    """
    from tfsidefuse.analysis.report import analyze_runs

    for name in ("examples", "rank_examples", "buckets", "k"):
        if getattr(args, name) < 1:
            print(
                f"tfsidefuse analyze: error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}",
                file=sys.stderr,
            )
            return 2
    try:
        report = analyze_runs(
            args.run,
            args.out,
            split=args.split,
            num_examples=args.examples,
            rank_examples=args.rank_examples,
            num_buckets=args.buckets,
            k=args.k,
            feature=args.feature,
            rtol=args.rtol,
            seed=args.seed,
            prepared_dir=args.prepared_dir,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"tfsidefuse analyze: error: {err}", file=sys.stderr)
        return 2
    for label, run in report["runs"].items():
        skipped = run["attention"]["skipped"]
        if skipped:
            print(f"{label}: attention not captured for {', '.join(skipped)}")
    print(f"wrote {len(report['files'])} files to {args.out}:")
    for name in report["files"]:
        print(f"  {name}")
    return 0
