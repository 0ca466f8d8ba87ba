"""prepare -> train -> evaluate, driven by a :class:`~tfsidefuse.config.RunConfig`.

The same functions back the CLI, the notebooks and the benchmarks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import keras
import numpy as np
import yaml

from tfsidefuse.config import ConfigError, RunConfig
from tfsidefuse.data.ingest import encode
from tfsidefuse.data.pipeline import make_dataset
from tfsidefuse.data.prepared import PreparedDataset, write_prepared
from tfsidefuse.evaluation import evaluate_model, evaluate_most_popular
from tfsidefuse.models.registry import build_model, is_cloze
from tfsidefuse.training.callbacks import TrainingTimer, default_callbacks

logger = logging.getLogger(__name__)

PREPARE_FINGERPRINT = "prepare_config.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
#: Variable names that weight decay leaves alone: biases and layer-norm scales and offsets.
NOT_DECAYED = ("bias", "output_bias", "gamma", "beta")


def read_raw(dataset_config):
    """Reads the raw dataset named by a dataset config section."""
    src = dataset_config.source
    if src == "demo":
        from tfsidefuse.data.demo import make_demo_dataset

        return make_demo_dataset(**(dataset_config.demo or {}))
    from tfsidefuse.data import readers

    if src == "s3rec":
        return readers.read_s3rec(dataset_config.path, name=dataset_config.name)
    if src == "recbole":
        return readers.read_recbole(dataset_config.path, name=dataset_config.name)
    if src == "tfds":
        return readers.read_tfds_movielens(dataset_config.name or "movielens/100k-ratings")
    raise ValueError(f"dataset.source {src!r} cannot be read as raw data")


def prepare(config: RunConfig, *, overwrite: bool = False) -> PreparedDataset:
    """Writes the prepared dataset of a config, or reuses it if it is up to date.

    A prepared directory records the dataset section it was made from; a run
    with the same section reuses it, a different one fails unless ``overwrite``.
    """
    ds_cfg = config.dataset
    target = ds_cfg.prepared_dir
    if ds_cfg.source == "prepared":
        return PreparedDataset.open(target)
    fingerprint = dataclasses.asdict(ds_cfg)
    stamp = os.path.join(target, PREPARE_FINGERPRINT)
    if os.path.exists(stamp) and not overwrite:
        with open(stamp) as fh:
            if json.load(fh) == fingerprint:
                logger.info("reusing prepared dataset %s", target)
                return PreparedDataset.open(target)
        raise FileExistsError(f"{target} was prepared from a different dataset config; pass --overwrite to replace it")
    raw = read_raw(ds_cfg)
    encoded = encode(raw, max_len=ds_cfg.max_len, k_core=ds_cfg.k_core, features=ds_cfg.features)
    write_prepared(encoded, target, num_shards=ds_cfg.num_shards, overwrite=overwrite or os.path.exists(target))
    with open(stamp, "w") as fh:
        json.dump(fingerprint, fh, indent=2)
    return PreparedDataset.open(target)


def create_model(config: RunConfig, prepared: PreparedDataset):
    """The compiled model of a config for a prepared dataset."""
    t = config.training
    policy = keras.config.dtype_policy()
    try:
        if t.mixed_precision:
            # Only the layers created here take the policy; the global default is restored below.
            keras.config.set_dtype_policy("mixed_float16")
        model = build_model(
            config.model.name,
            dict(config.model.params),
            schema=prepared.schema,
            item_feature_tables=prepared.item_feature_tables,
            train_on="last_position" if t.objective == "prefix" else "all_positions",
            exclude_history=t.exclude_history,
            train_metrics=t.train_metrics,
        )
    except ValueError as err:  # e.g. a feature the dataset does not have
        raise ConfigError(f"model: {err}") from err
    finally:
        keras.config.set_dtype_policy(policy)
    # Build the weights now: BackupAndRestore needs them before fit() to restore a killed run.
    dummy = {"item_ids": np.full((1, 1), 2, dtype="int32")}
    dummy.update({f.name: np.ones((1, 1), dtype="int32") for f in prepared.schema.interaction_features})
    model(dummy)
    model.compile(optimizer=make_optimizer(t, model), jit_compile=t.jit_compile)
    return model


def make_optimizer(training_config, model: keras.Model) -> keras.optimizers.Optimizer:
    """Adam with the config's learning rate and decoupled weight decay (none by default, as the papers).

    With ``weight_decay`` > 0 (AdamW), biases and layer-norm parameters are not
    decayed; embedding tables and kernels are. With ``ema_momentum`` the
    optimizer also keeps the moving average of the weights (Keras' ``use_ema``).
    """
    t = training_config
    ema = {"use_ema": True, "ema_momentum": t.ema_momentum} if t.ema_momentum is not None else {}
    optimizer = keras.optimizers.Adam(learning_rate=t.learning_rate, weight_decay=t.weight_decay or None, **ema)
    if t.weight_decay:
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if v.name in NOT_DECAYED])
    return optimizer


def training_datasets(config: RunConfig, prepared: PreparedDataset) -> tuple:
    """The training and validation ``tf.data`` pipelines of a config (objective, buckets, XLA padding)."""
    t = config.training
    mode = "prefix" if t.objective == "prefix" else "all_positions"
    # XLA compiles one program per shape: with it, batches are padded to their bucket bound.
    common = {"cache": t.cache, "bucket_boundaries": t.length_buckets, "pad_to_max_len": t.jit_compile}
    train_ds = make_dataset(
        prepared, "train", mode=mode, batch_size=t.batch_size, seed=t.seed, shuffle_buffer=t.shuffle_buffer, **common
    )
    valid_ds = make_dataset(prepared, "valid", mode="eval", batch_size=t.eval_batch_size, **common)
    return train_ds, valid_ds


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns (and writes to ``<run_dir>/metrics.json``)."""

    model: keras.Model
    history: dict
    metrics: dict

    def summary_rows(self) -> dict[str, dict[str, float]]:
        return {k: v for k, v in self.metrics.items() if isinstance(v, dict)}


def _check_resumable(run_dir: str, config: RunConfig) -> None:
    """Refuses to resume a killed run of another config (its backup would silently continue the old training)."""
    backup = os.path.join(run_dir, "backup")
    saved = os.path.join(run_dir, "config.yaml")
    if not (os.path.isdir(backup) and os.path.isfile(saved)):
        return
    with open(saved) as fh:
        previous = yaml.safe_load(fh) or {}
    # Through YAML, as the saved file went: tuples and lists compare equal.
    current = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))
    changed = sorted(
        f"{section}.{key}"
        for section in set(previous) | set(current)
        for key in set(previous.get(section, {})) | set(current.get(section, {}))
        if previous.get(section, {}).get(key) != current.get(section, {}).get(key)
    )
    if changed:
        raise ConfigError(
            f"training.run_dir {run_dir!r} holds an interrupted run of a different config (changed: {changed}); "
            f"resume it with its own config, or remove {backup!r} / choose another run_dir"
        )


def train(
    config: RunConfig,
    prepared: PreparedDataset | None = None,
    *,
    evaluate_test: bool = True,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Trains a model from a config; restores the best validation weights.

    ``callbacks`` are added to the config's own (early stopping, checkpoints,
    logs, timing) and run after them.

    Writes ``model.keras``, ``config.yaml``, ``history.csv``, TensorBoard logs
    and ``metrics.json`` (best validation and test metrics, epochs, timing) to
    the run directory. A killed run resumes from its last finished epoch
    when trained again with the same config; with another config it is an
    error (its backup would continue the old training).
    """
    prepared = prepared or prepare(config)
    t = config.training
    run_dir = t.run_dir
    os.makedirs(run_dir, exist_ok=True)
    _check_resumable(run_dir, config)
    with open(os.path.join(run_dir, "config.yaml"), "w") as fh:
        yaml.safe_dump(config.to_dict(), fh, sort_keys=False)
    keras.utils.set_random_seed(t.seed)

    train_ds, valid_ds = training_datasets(config, prepared)
    mode = "prefix" if t.objective == "prefix" else "all_positions"
    model = create_model(config, prepared)
    per_epoch = prepared.stats["train_targets" if mode == "prefix" else "train_sequences"]
    callbacks = default_callbacks(t, examples_per_epoch=per_epoch) + list(callbacks or [])

    start = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=valid_ds,
        validation_freq=t.eval_every,
        epochs=t.epochs,
        steps_per_epoch=t.steps_per_epoch,
        callbacks=callbacks,
        verbose=t.verbose,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
    )
    wall = time.perf_counter() - start
    timing = next(c for c in callbacks if isinstance(c, TrainingTimer))
    early = next(c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping))

    model.save(os.path.join(run_dir, MODEL_FILE))
    metrics: dict = {
        "model": config.model.name,
        "dataset": prepared.schema.name,
        # Cloze backbones train on masked items whatever `objective` says.
        "objective": "cloze" if is_cloze(config.model.name) else t.objective,
        # Absolute epochs: a resumed run continues the numbering of the killed one.
        "epochs_run": history.epoch[-1] + 1 if history.epoch else 0,
        "best_epoch": (early.best_epoch + 1) if early.best_weights is not None else None,
        "wall_seconds": round(wall, 2),
        "train_seconds": round(timing.train_seconds, 2),
        "train_sequences": timing.examples,
        "train_sequences_per_second": round(timing.examples / max(timing.train_seconds, 1e-9), 1),
        "valid": evaluate_model(model, prepared, "valid", batch_size=t.eval_batch_size),
    }
    if evaluate_test:
        metrics["test"] = evaluate_model(model, prepared, "test", batch_size=t.eval_batch_size)
    with open(os.path.join(run_dir, METRICS_FILE), "w") as fh:
        json.dump(metrics, fh, indent=2)
    return TrainResult(model=model, history=dict(history.history), metrics=metrics)


def load_trained(run_dir: str) -> keras.Model:
    """Loads the model a run saved."""
    path = os.path.join(run_dir, MODEL_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no trained model in {run_dir} (expected {MODEL_FILE}); run `tfsidefuse train` first")
    return keras.models.load_model(path)


def evaluate(config: RunConfig, split: str = "test", *, with_baseline: bool = True) -> dict[str, dict[str, float]]:
    """Evaluates the trained model of a config's run directory (and the most-popular baseline)."""
    prepared = PreparedDataset.open(config.dataset.prepared_dir)
    model = load_trained(config.training.run_dir)
    rows = {
        f"{config.model.name} ({split})": evaluate_model(
            model, prepared, split, batch_size=config.training.eval_batch_size
        )
    }
    if with_baseline:
        rows[f"most-popular ({split})"] = evaluate_most_popular(prepared, split)
    return rows
