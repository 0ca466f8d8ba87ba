"""Trains a config under Keras' JAX backend from a numpy dataset file, on a machine without TensorFlow.

The data come from a ``.npz`` written beforehand where TensorFlow is installed (TFRecords need it):

    python -m tfsidefuse.data.numpy_export --config benchmarks/configs/amazon-beauty-difsr-15min.yaml \
        --out beauty-difsr.npz

Then, on the JAX machine (``pip install -e . --no-deps`` and ``pip install "jax[cuda12]" keras numpy pyyaml``, or
any environment where ``import tensorflow`` fails; the script never imports it):

    KERAS_BACKEND=jax python benchmarks/jax_train.py --data beauty-difsr.npz --target 0.128 --out runs/jax-difsr

The model, optimizer (Adam or AdamW without decay on biases and LayerNorm, the moving average of the weights),
cosine schedule, epochs and batch size are the config's (the one stored in the file, or ``--config``). Every epoch
prints its training and validation time, the validation NDCG@20 and the test HR@20 and NDCG@20 of the weights that
are validated (the moving average when the config keeps one); the wall time at which test HR@20 (= Recall@20 with
one target) first reaches ``--target`` is printed at the end, with the test evaluations left out of it as in
``benchmarks/time_to_quality.py``. Batches are padded to ``max_len`` (one compiled shape per batch size). With
``--out`` the weights of the epoch with the best validation metric are saved as ``model.keras`` (loadable under the
TensorFlow backend, which exports it) with ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

#: Variable names left out of decoupled weight decay (biases, LayerNorm scale and offset), as the trainer does.
NOT_DECAYED = ("bias", "output_bias", "gamma", "beta")


def _config_sections(args) -> tuple:
    """The config dict of ``--config`` or of the file's stored config, with its validated model and training."""
    import yaml

    from tfsidefuse.config import ModelConfig, TrainingConfig, _build

    if args.config:
        from tfsidefuse.presets import preset_path

        path = args.config if os.path.exists(args.config) else preset_path(args.config)
        if path is None:
            raise SystemExit(f"config not found: {args.config}")
        with open(path) as fh:
            data = yaml.safe_load(fh)
    else:
        data = args.dataset.config
        if data is None:
            raise SystemExit(f"{args.data} holds no config; pass --config")
    for override in args.set:
        dotted, _, value = override.partition("=")
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})[key] = yaml.safe_load(value)
    model_params = dict(data.get("model") or {})
    model = ModelConfig(name=model_params.pop("name", "sasrec"), params=model_params)
    model.validate()
    training = _build("training", TrainingConfig, data["training"])
    training.validate()
    return data, model, training


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help=".npz written by python -m tfsidefuse.data.numpy_export")
    parser.add_argument("--config", help="a config file or preset (default: the config stored in --data)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    parser.add_argument("--target", type=float, default=0.128, help="test HR@20 to reach (DIF-SR paper: 0.1284)")
    parser.add_argument("--epochs", type=int, help="default: the config's training.epochs")
    parser.add_argument("--out", help="directory for model.keras and metrics.json of the best validated epoch")
    args = parser.parse_args(argv)

    import hashlib

    import jax
    import keras
    import yaml

    from tfsidefuse.data.numpy_export import load_numpy
    from tfsidefuse.models.registry import build_model
    from tfsidefuse.training.callbacks import cosine_learning_rate

    if keras.backend.backend() != "jax":
        raise SystemExit(f"KERAS_BACKEND must be jax, got {keras.backend.backend()}")
    args.dataset = load_numpy(args.data)
    config, model_config, t = _config_sections(args)
    data = args.dataset
    epochs = args.epochs or t.epochs
    devices = jax.devices()
    print(f"devices: {', '.join(str(d) for d in devices)} ({devices[0].device_kind})", flush=True)
    print(
        f"{model_config.name} on {data.schema.name}: {data.schema.num_items} items, objective {data.objective}, "
        f"{len(data.splits['train'][1])} training examples, batch {t.batch_size}, {epochs} epochs",
        flush=True,
    )
    keras.utils.set_random_seed(t.seed)
    model = build_model(
        model_config.name,
        dict(model_config.params),
        schema=data.schema,
        item_feature_tables=data.item_feature_tables,
        objective=data.objective,
        exclude_history=t.exclude_history,
    )
    model({k: v[:1] for k, v in data.splits["train"][0].items()})
    ema = {"use_ema": True, "ema_momentum": t.ema_momentum} if t.ema_momentum is not None else {}
    optimizer = keras.optimizers.Adam(learning_rate=t.learning_rate, weight_decay=t.weight_decay or None, **ema)
    if t.weight_decay:
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if v.name in NOT_DECAYED])
    model.compile(optimizer=optimizer, jit_compile=True)

    train_x, train_y = data.splits["train"]
    valid_x, valid_y = data.splits["valid"]
    test_x, test_y = data.splits["test"]
    monitor = t.monitor

    class Progress(keras.callbacks.Callback):
        """Per-epoch times and test quality; the test evaluations are left out of the wall time."""

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict] = []
            self.reached: tuple[int, float] | None = None
            self.bookkeeping = 0.0
            self.best: tuple[float, int] | None = None

        def on_train_begin(self, logs=None) -> None:
            self.start = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.epoch_start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            test_start = time.perf_counter()
            raw = None
            if t.ema_momentum:
                # The averaged weights are validated, tested and saved; the steps train the raw ones. Copies
                # through numpy: the JAX trainer donates the buffers of the variables to its next step.
                raw = [keras.ops.convert_to_numpy(v).copy() for v in self.model.trainable_variables]
                for variable, average in zip(
                    self.model.trainable_variables, self.model.optimizer._model_variables_moving_average
                ):
                    variable.assign(keras.ops.convert_to_numpy(average).copy())
            valid = self.model.evaluate(valid_x, valid_y, batch_size=t.eval_batch_size, verbose=0, return_dict=True)
            end = time.perf_counter()
            wall = end - self.start - self.bookkeeping
            test = self.model.evaluate(test_x, test_y, batch_size=t.eval_batch_size, verbose=0, return_dict=True)
            row = {
                "epoch": epoch + 1,
                "train_seconds": test_start - self.epoch_start,
                "valid_seconds": end - test_start,
                "wall_seconds": wall,
                "loss": float(logs["loss"]),
                f"valid_{monitor}": float(valid[monitor]),
                "test_hr@20": float(test["hr@20"]),
                "test_ndcg@20": float(test["ndcg@20"]),
            }
            self.rows.append(row)
            print(
                f"epoch {row['epoch']:>3}: train {row['train_seconds']:.1f} s, valid {row['valid_seconds']:.1f} s, "
                f"wall {wall:.0f} s, loss {row['loss']:.4f}, valid {monitor} {row[f'valid_{monitor}']:.4f}, "
                f"test hr@20 {row['test_hr@20']:.4f} ndcg@20 {row['test_ndcg@20']:.4f}",
                flush=True,
            )
            if self.reached is None and row["test_hr@20"] >= args.target:
                self.reached = (epoch + 1, wall)
            value = row[f"valid_{monitor}"]
            if args.out and (self.best is None or value > self.best[0]):
                self.best = (value, row)
                os.makedirs(args.out, exist_ok=True)
                self.model.save(os.path.join(args.out, "model.keras"))
            if raw is not None:
                for variable, value in zip(self.model.trainable_variables, raw):
                    variable.assign(value)
            self.bookkeeping += time.perf_counter() - end

    progress = Progress()
    callbacks = []
    if t.lr_schedule == "cosine":
        callbacks.append(
            keras.callbacks.LearningRateScheduler(
                lambda epoch, _: cosine_learning_rate(epoch, t.epochs, t.learning_rate, t.min_learning_rate)
            )
        )
    callbacks.append(progress)
    model.fit(
        train_x,
        train_y,
        batch_size=t.batch_size,
        epochs=epochs,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    if progress.reached:
        epoch, wall = progress.reached
        print(f"test hr@20 >= {args.target} first after epoch {epoch}: {wall:.0f} s ({wall / 60:.1f} min)")
    else:
        best = max((row["test_hr@20"] for row in progress.rows), default=float("nan"))
        print(f"test hr@20 never reached {args.target} (best {best:.4f})")
    if args.out and progress.best is not None:
        # The run directory of `tfsidefuse train`: config.yaml, model.keras and metrics.json naming the config's
        # hash and the dataset's fingerprint, so that `tfsidefuse export --run` (TensorFlow backend) accepts it.
        config_text = yaml.safe_dump(config, sort_keys=False)
        with open(os.path.join(args.out, "config.yaml"), "w") as fh:
            fh.write(config_text)
        best = progress.best[1]
        summary = {
            "model": model_config.name,
            "dataset": data.schema.name,
            "dataset_fingerprint": data.fingerprint,
            "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
            "best_epoch": best["epoch"],
            "epochs_run": len(progress.rows),
            "valid": {monitor: best[f"valid_{monitor}"]},
            "test": {"hr@20": best["test_hr@20"], "ndcg@20": best["test_ndcg@20"]},
            "backend": "jax",
            "devices": [str(d) for d in devices],
            "device_kind": devices[0].device_kind,
            "target_hr@20": args.target,
            "reached": None
            if progress.reached is None
            else {"epoch": progress.reached[0], "wall_seconds": progress.reached[1]},
            "history": progress.rows,
        }
        with open(os.path.join(args.out, "metrics.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
        print(f"saved {os.path.join(args.out, 'model.keras')} (best epoch {summary['best_epoch']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
