"""Trains one config to convergence and prints its quality and speed beside the published numbers.

Usage (from the project root):
    python benchmarks/train_benchmark.py --config configs/amazon-beauty/sasrec.yaml

Prints valid and test HR@10/20 and NDCG@10/20, epochs, wall time and training sequences per second,
and appends the result to benchmarks/results/results.jsonl: one JSON object per run with what produced it
(the commit, the full resolved config, the seed, the prepared dataset's fingerprint, the machine and threads)
and the test rank of every user in benchmarks/results/ranks/<run id>.npz, for paired tests between runs.
The test split is read once, after training, by the model that validation selected.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from published import PUBLISHED  # noqa: E402

COLUMNS = ("hr@10", "hr@20", "ndcg@10", "ndcg@20")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_version() -> str:
    """The commit of the working tree, with ``+dirty`` when tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--results", default="benchmarks/results/results.jsonl")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf
    import yaml

    from tfsidefuse import __version__
    from tfsidefuse.config import load_config
    from tfsidefuse.data.manifest import content_fingerprint
    from tfsidefuse.evaluation import format_table, ndcg_at, per_user_ranks
    from tfsidefuse.models.registry import used_features
    from tfsidefuse.training.trainer import prepare, train

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = load_config(args.config, overrides)
    prepared = prepare(config)
    version = code_version()
    fingerprint = content_fingerprint(prepared.directory)
    result = train(config, prepared)
    m = result.metrics
    finished = datetime.datetime.now(datetime.timezone.utc)
    run_id = f"{finished:%Y%m%dT%H%M%S}-{prepared.schema.name}-{config.model.name}-seed{config.training.seed}"
    users, ranks = per_user_ranks(result.model, prepared, "test", batch_size=config.training.eval_batch_size)
    ranks_path = os.path.join(os.path.dirname(args.results), "ranks", f"{run_id}.npz")
    os.makedirs(os.path.dirname(ranks_path), exist_ok=True)
    np.savez_compressed(ranks_path, user_ids=users.astype(np.int32), ranks=ranks.astype(np.int32))
    # The per-user ranks must give the reported metric: a mismatch means the two evaluations read different data.
    if abs(float(ndcg_at(ranks).mean()) - m["test"]["ndcg@20"]) > 1e-4:
        raise RuntimeError(f"per-user NDCG@20 {ndcg_at(ranks).mean():.6f} != evaluated {m['test']['ndcg@20']:.6f}")
    rows = {"tfsidefuse (valid)": m["valid"], "tfsidefuse (test)": m["test"]}
    for name, values in PUBLISHED.get((prepared.schema.name, config.model.name), {}).items():
        rows[f"{name} (test)"] = values
    print()
    print(
        f"{config.model.name} on {prepared.schema.name}: {m['epochs_run']} epochs (best {m['best_epoch']}), "
        f"wall {m['wall_seconds']:.0f} s, training {m['train_seconds']:.0f} s, "
        f"{m['train_sequences_per_second']:.0f} training sequences/s ({config.training.objective})"
    )
    print(format_table(rows, COLUMNS))
    threads = os.environ.get("TF_NUM_INTRAOP_THREADS", "all")
    record = {
        "date": finished.isoformat(timespec="seconds"),
        "run_id": run_id,
        "version": __version__,
        "commit": version,
        "config": args.config,
        "overrides": overrides,
        "resolved_config": config.to_dict(),
        "seed": config.training.seed,
        "dataset_fingerprint": fingerprint,
        "ranks_file": os.path.relpath(ranks_path, os.path.dirname(args.results)),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, tensorflow {tf.__version__} cpu",
        "hardware": f"{cpu_name()}, {os.cpu_count()} cores, {threads} intra-op threads, no GPU",
        "backend": f"keras {keras.__version__} / {keras.backend.backend()}",
        "features": used_features(config.model.name, config.model.params, prepared.schema),
        **{k: v for k, v in m.items()},
        # Per-epoch curves (validation metrics, training loss, learning rate) for the docs.
        "curves": {
            key: [round(float(v), 6) for v in values]
            for key, values in result.history.items()
            if key in ("loss", "learning_rate") or key in ("val_hr@20", "val_ndcg@20", "val_ndcg@10", "val_hr@10")
        },
    }
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
