"""Training and evaluation speed of one config, beside the official PyTorch implementation's figures.

Usage (from the project root; prepares the dataset if needed):
    python benchmarks/epoch_speed.py --config configs/amazon-beauty/difsr.yaml --reference difsr \
        --set training.objective=prefix --epochs 2

Prints seconds per training epoch, training sequences per second, seconds per full-ranking validation pass and
peak resident memory, and, with --reference, the ratio to the official code's epoch throughput measured on a
2-core CPU machine (RecBole, torch CPU, 2 threads, jemalloc, Beauty, every prefix an example: 131,413 training
sequences per epoch), and the epoch time ratio: with the loss at every position an epoch is one pass over the 22,363
users but trains on the same 131,413 next-item targets as the official prefix epoch. The first epoch includes tracing
and is reported separately; run nothing else meanwhile.
The training set-up (objective, length buckets, XLA, mixed precision) is the config's, as `tfsidefuse train`.
With --starvation it also measures whether the input pipeline keeps up: one pass of the pipeline alone, and one
`fit` epoch over the same batches held in memory; the difference to a `fit` epoch on the live pipeline is the time the
training steps waited for input (or lost to the pipeline's threads on the same cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The official implementation on Beauty, 2 CPU cores: seconds per training epoch over 131,413 prefix sequences
# and seconds per full-ranking evaluation pass over 22,363 users.
OFFICIAL = {
    "difsr": {"epoch_seconds": 1440.0, "sequences": 131_413, "eval_seconds": 62.0},
    "sasrec": {"epoch_seconds": 1030.0, "sequences": 131_413, "eval_seconds": None},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs timed (0: the evaluation pass only)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument(
        "--eval-passes", type=int, default=3, help="validation passes timed after the first (which fills the cache)"
    )
    parser.add_argument("--reference", choices=sorted(OFFICIAL), help="compare with the official figures")
    parser.add_argument(
        "--starvation", action="store_true", help="also time the pipeline alone and an epoch from batches in memory"
    )
    args = parser.parse_args(argv)
    if args.eval_passes < 1:
        parser.error(f"--eval-passes must be at least 1, got {args.eval_passes}")

    import yaml

    from tfsidefuse.config import load_config
    from tfsidefuse.data.pipeline import count_examples
    from tfsidefuse.training.trainer import create_model, prepare, training_datasets

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = load_config(args.config, overrides)
    t = config.training
    prepared = prepare(config)
    train_ds, valid_ds = training_datasets(config, prepared)
    examples = count_examples(prepared, "train", t.objective)
    if examples is None:  # prepared before length statistics were recorded
        examples = prepared.stats["train_targets" if t.objective == "prefix" else "train_sequences"]
    # Next-item targets an epoch trains on: one per prefix, or every real position of every sequence.
    targets = count_examples(prepared, "train", "prefix") or prepared.stats["train_targets"]
    model = create_model(config, prepared)

    epoch_seconds = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.fit(train_ds, epochs=1, verbose=0, shuffle=False)
        epoch_seconds.append(time.perf_counter() - start)
    starvation = None
    if args.starvation and epoch_seconds:
        in_memory = train_ds.cache()
        start = time.perf_counter()
        num_batches = sum(1 for _ in in_memory)  # the pipeline alone, filling the cache with one epoch's batches
        pipeline_seconds = time.perf_counter() - start
        start = time.perf_counter()
        model.fit(in_memory, epochs=1, verbose=0, shuffle=False)
        starvation = (pipeline_seconds, num_batches, time.perf_counter() - start)
    eval_seconds = []
    for _ in range(1 + args.eval_passes):
        start = time.perf_counter()
        model.evaluate(valid_ds, verbose=0)
        eval_seconds.append(time.perf_counter() - start)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    steady = epoch_seconds[1:] or epoch_seconds
    per_epoch = sum(steady) / len(steady) if steady else float("nan")
    throughput = examples / per_epoch
    print(
        f"{config.model.name} on {prepared.schema.name}: objective {t.objective}, batch {t.batch_size}, "
        f"length buckets {t.length_buckets}, XLA {t.jit_compile}, mixed precision {t.mixed_precision}, "
        f"{examples} training sequences per epoch, {model.count_params():,} parameters"
    )
    rows = []
    if epoch_seconds:
        rows += [
            ("first epoch, with tracing (s)", f"{epoch_seconds[0]:.1f}"),
            (f"epoch, mean of {len(steady)} (s)", f"{per_epoch:.1f}"),
            ("training sequences/s", f"{throughput:.0f}"),
            (f"training targets/s ({targets} per epoch)", f"{targets / per_epoch:.0f}"),
        ]
    if starvation:
        pipeline_seconds, num_batches, memory_seconds = starvation
        waited = per_epoch - memory_seconds
        rows += [
            (f"input pipeline alone, {num_batches} batches (s)", f"{pipeline_seconds:.1f}"),
            ("epoch from batches in memory (s)", f"{memory_seconds:.1f}"),
            ("steps waiting on input (s per epoch, share)", f"{waited:.1f} ({100 * waited / per_epoch:.0f}%)"),
        ]
    rows += [
        (
            f"full-ranking validation pass, {prepared.stats['users']} users (s, median of {args.eval_passes})",
            f"{statistics.median(eval_seconds[1:]):.1f}",
        ),
        ("first validation pass, with tracing and caching (s)", f"{eval_seconds[0]:.1f}"),
        ("peak resident memory (GiB)", f"{peak_gib:.2f}"),
    ]
    if args.reference:
        ref = OFFICIAL[args.reference]
        ref_throughput = ref["sequences"] / ref["epoch_seconds"]
        if epoch_seconds:
            rows.append((f"official {args.reference} training sequences (= targets)/s", f"{ref_throughput:.0f}"))
            rows.append(("sequence throughput ratio (ours / official)", f"{throughput / ref_throughput:.1f}x"))
            # Both objectives train on every next-item target once per epoch: epochs compare directly.
            rows.append(("epoch time ratio (official / ours)", f"{ref['epoch_seconds'] / per_epoch:.1f}x"))
        if ref["eval_seconds"]:
            rows.append(("official evaluation pass (s)", f"{ref['eval_seconds']:.0f}"))
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value:>10}" for name, value in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
