"""Wall time to a test quality: trains one config with early stopping, noting when a test metric first reaches a target.

Usage (from the project root; prepares the dataset if needed):
    python benchmarks/time_to_quality.py --config configs/amazon-beauty/difsr.yaml \
        --set training.objective=all_positions --set model.hidden_dim=64 --target 0.128

After every validation the test split is evaluated too (its time is left out of the reported wall time: it is the
benchmark's bookkeeping, not training), and the first wall time at which test HR@20 (= Recall@20 with one target)
reaches the target is printed, with the early-stopped model's final test metrics. DIF-SR's published Beauty quality
is test Recall@20 0.1284 (docs/models.md#published). Run nothing else on the machine meanwhile.
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
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--target", type=float, default=0.128, help="test value to reach")
    parser.add_argument("--metric", default="hr@20", help="test metric the target applies to")
    args = parser.parse_args(argv)

    import keras
    import yaml

    from tfsidefuse.config import load_config
    from tfsidefuse.data.pipeline import make_dataset
    from tfsidefuse.training.trainer import prepare, train

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = load_config(args.config, overrides)
    t = config.training
    prepared = prepare(config)
    test_ds = make_dataset(
        prepared, "test", objective="eval", batch_size=t.eval_batch_size, bucket_boundaries=t.length_buckets, cache=True
    )

    class TestQuality(keras.callbacks.Callback):
        """Test metric after each validated epoch; wall time without its own evaluations."""

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[tuple[int, float, float]] = []
            self.reached: tuple[int, float] | None = None
            self.bookkeeping = 0.0

        def on_train_begin(self, logs=None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            if not any(k.startswith("val_") for k in logs or {}):
                return
            begin = time.perf_counter()
            wall = begin - self.start - self.bookkeeping  # the earlier test evaluations left out
            value = self.model.evaluate(test_ds, verbose=0, return_dict=True)[args.metric]
            self.bookkeeping += time.perf_counter() - begin
            self.rows.append((epoch + 1, wall, value))
            print(f"epoch {epoch + 1}: {wall:.0f} s, test {args.metric} {value:.4f}", flush=True)
            if self.reached is None and value >= args.target:
                self.reached = (epoch + 1, wall)

    tracker = TestQuality()
    result = train(config, prepared, callbacks=[tracker])
    m = result.metrics
    params = config.model.params
    print(
        f"{config.model.name} on {prepared.schema.name}: d={params.get('hidden_dim')}, {params.get('num_layers')} "
        f"layers, objective {t.objective}, batch {t.batch_size}, lr {t.learning_rate}"
    )
    print(f"{'epoch':>5} {'wall s':>8} {'test ' + args.metric:>12}")
    for epoch, wall, value in tracker.rows:
        print(f"{epoch:>5} {wall:>8.0f} {value:>12.4f}")
    if tracker.reached:
        epoch, wall = tracker.reached
        print(f"test {args.metric} >= {args.target} first after epoch {epoch}: {wall:.0f} s ({wall / 60:.1f} min)")
    else:
        best = max((v for _, _, v in tracker.rows), default=float("nan"))
        print(f"test {args.metric} never reached {args.target} (best {best:.4f})")
    print(
        f"early-stopped model: best epoch {m['best_epoch']} of {m['epochs_run']}, training wall "
        f"{m['wall_seconds'] - tracker.bookkeeping:.0f} s, test {args.metric} {m['test'][args.metric]:.4f}, "
        f"ndcg@20 {m['test']['ndcg@20']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
