"""Where a training step's time goes, for one config: input pipeline, encoder, scoring + softmax, backward, update.

Usage (from the project root; prepares the dataset if needed):
    python benchmarks/profile_step.py --config configs/amazon-beauty/sasrec.yaml
    python benchmarks/profile_step.py --config configs/amazon-beauty/difsr.yaml --set training.objective=all_positions

Each stage is a compiled `tf.function` timed over the same cached batches of the config's own training pipeline
(length buckets, objective), after a warm-up pass; the stages are cumulative, so each row's extra time over the
previous one is what that stage costs (the last one is Keras's own compiled train step, which applies the sparse
gradient of the item table directly). With --per-width it also times one train step per padded batch width and
sums count x step time over the epoch's widths. Run nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _time(fn, batches, repeats: int) -> float:
    """Mean milliseconds of `fn(x, y)` per batch, after one warm-up pass over `batches`."""
    for x, y in batches:
        fn(x, y)
    start = time.perf_counter()
    for _ in range(repeats):
        for x, y in batches:
            fn(x, y)
    return 1000 * (time.perf_counter() - start) / (repeats * len(batches))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--batches", type=int, default=40, help="batches timed per stage")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--per-width", action="store_true", help="also time one Keras train step per padded batch width of an epoch"
    )
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf
    import yaml

    from tfsidefuse.config import load_config
    from tfsidefuse.training.trainer import create_model, prepare, training_datasets

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = load_config(args.config, overrides)
    prepared = prepare(config)
    train_ds, _ = training_datasets(config, prepared)
    model = create_model(config, prepared)

    widths: dict[int, list] = {}  # padded width -> [batch count, one batch of that width]
    for x, y in train_ds:  # the first pass fills the cache
        entry = widths.setdefault(int(x["item_ids"].shape[1]), [0, (x, y)])
        entry[0] += 1
    num_batches = sum(count for count, _ in widths.values())
    start = time.perf_counter()
    sum(1 for _ in train_ds)
    pipeline_epoch = time.perf_counter() - start
    # A shuffled sample of batches: every length bucket in its share.
    batches = list(train_ds.take(args.batches))

    @tf.function(reduce_retracing=True)
    def encoder(x, y):
        return model.backbone(model._sanitize(x, keep_last=False), training=True)

    @tf.function(reduce_retracing=True)
    def forward(x, y):
        y_pred = model(x, training=True)
        return model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)

    def train_step(x, y):
        model.train_on_batch(x, y)

    stages = [
        ("encoder forward (backbone)", encoder),
        ("+ scoring all items, softmax loss (forward)", forward),
        ("+ backward, optimizer update, metrics (Keras train step)", train_step),
    ]
    times = [(name, _time(fn, batches, args.repeats)) for name, fn in stages]
    real = np.mean([float(np.mean(x["item_ids"].numpy() != 0)) for x, _ in batches])
    width = np.mean([x["item_ids"].shape[1] for x, _ in batches])
    t = config.training
    print(
        f"{config.model.name} on {prepared.schema.name}: objective {t.objective}, batch {t.batch_size}, "
        f"length buckets {t.length_buckets}, XLA {t.jit_compile}; {num_batches} batches per epoch, "
        f"mean padded width {width:.1f}, real slots {100 * real:.0f}%"
    )
    print(f"{'stage':<56} {'ms/batch':>9} {'extra ms':>9} {'share':>6}")
    total = times[-1][1]
    previous = 0.0
    for name, ms in times:
        print(f"{name:<56} {ms:9.1f} {ms - previous:9.1f} {100 * (ms - previous) / total:5.0f}%")
        previous = ms
    print(
        f"input pipeline alone: {pipeline_epoch:.1f} s per epoch ({1000 * pipeline_epoch / num_batches:.1f} ms/batch)"
    )
    print(f"estimated epoch: {total * num_batches / 1000:.1f} s")
    if args.per_width:
        # Long windows cost more per batch: the epoch is the sum over widths of count x step time.
        print(f"{'padded width':>12} {'batches':>8} {'sequences':>10} {'ms/step':>9} {'s/epoch':>8}")
        epoch = 0.0
        for width, (count, (x, y)) in sorted(widths.items()):
            ms = _time(train_step, [(x, y)], args.repeats)
            epoch += count * ms / 1000
            print(f"{width:>12} {count:>8} {int(x['item_ids'].shape[0]):>10} {ms:>9.0f} {count * ms / 1000:>8.1f}")
        print(f"sum over widths: {epoch:.1f} s per epoch of train steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
