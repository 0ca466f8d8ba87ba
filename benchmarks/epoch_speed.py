"""Training and evaluation speed of one config: seconds per epoch, sequences per second, seconds per eval pass.

Usage (from the project root; prepares the dataset if needed):
    python benchmarks/epoch_speed.py --config configs/amazon-beauty/sasrec.yaml --epochs 3

The first epoch includes tracing and is reported separately; run nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)

    import yaml

    from tfsidefuse.config import load_config
    from tfsidefuse.data.pipeline import count_examples, make_dataset
    from tfsidefuse.training.trainer import create_model, prepare

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = load_config(args.config, overrides)
    t = config.training
    prepared = prepare(config)
    mode = "prefix" if t.objective == "prefix" else "all_positions"
    train_ds = make_dataset(prepared, "train", mode=mode, batch_size=t.batch_size, seed=t.seed, cache=True)
    valid_ds = make_dataset(prepared, "valid", batch_size=t.eval_batch_size, cache=True)
    examples = count_examples(prepared, "train", mode)
    if examples is None:  # prepared before length statistics were recorded
        examples = prepared.stats["train_targets" if mode == "prefix" else "train_sequences"]
    model = create_model(config, prepared)

    epoch_seconds = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.fit(train_ds, epochs=1, verbose=0, shuffle=False)
        epoch_seconds.append(time.perf_counter() - start)
    eval_seconds = []
    for _ in range(2):
        start = time.perf_counter()
        model.evaluate(valid_ds, verbose=0)
        eval_seconds.append(time.perf_counter() - start)

    steady = epoch_seconds[1:] or epoch_seconds
    per_epoch = sum(steady) / len(steady)
    print(f"{config.model.name} on {prepared.schema.name} ({mode}, batch {t.batch_size}, {examples} examples/epoch)")
    print(f"first epoch (with tracing): {epoch_seconds[0]:.1f} s")
    print(f"epoch: {per_epoch:.1f} s  ->  {examples / per_epoch:.0f} training sequences/s")
    print(f"full-ranking validation pass ({prepared.stats['users']} users): {eval_seconds[-1]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
