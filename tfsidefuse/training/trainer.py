"""prepare -> train -> evaluate, driven by a :class:`~tfsidefuse.config.RunConfig`.

The same functions back the CLI, the notebooks and the benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time

import keras
import numpy as np
import yaml

from tfsidefuse.config import ConfigError, RunConfig
from tfsidefuse.data import manifest as manifest_lib
from tfsidefuse.data.ingest import encode
from tfsidefuse.data.pipeline import count_examples, fixed_batch_shapes, make_dataset, pad_batches, reading
from tfsidefuse.data.prepared import SCHEMA_FILE, PreparedDataset, remove_stale_temp_dirs, write_prepared
from tfsidefuse.errors import PreparedDataError, RunDirError
from tfsidefuse.evaluation import evaluate_model, evaluate_most_popular, item_popularity
from tfsidefuse.models.registry import BACKBONES, build_model, is_cloze
from tfsidefuse.training import distribution
from tfsidefuse.training.callbacks import HISTORY_PARTIAL_FILE, TrainingTimer, default_callbacks
from tfsidefuse.training.optimizers import LazyAdam

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.csv"
#: What a finished or interrupted run leaves in its directory.
RUN_FILES = (MODEL_FILE, METRICS_FILE, CONFIG_FILE, HISTORY_FILE, HISTORY_PARTIAL_FILE, "logs", "backup")
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
    if src in ("csv", "parquet"):
        from tfsidefuse.data.partitioned import read_partitioned

        return read_partitioned(dataset_config.path, src, dataset_config.columns, name=dataset_config.name)
    raise ValueError(f"dataset.source {src!r} cannot be read as raw data")


def raw_input_files(dataset_config) -> list[str] | None:
    """The raw files a dataset config reads (whose hashes the manifest keeps), or None for generated data."""
    src, path = dataset_config.source, dataset_config.path
    if src == "s3rec":
        return [os.path.join(path, "sequences.txt"), os.path.join(path, "item_attributes.json")]
    if src == "recbole":
        stem = dataset_config.name or os.path.basename(os.path.normpath(path))
        return [
            os.path.join(path, f"{stem}{ext}")
            for ext in (".inter", ".item")
            if ext == ".inter" or os.path.exists(os.path.join(path, f"{stem}{ext}"))
        ]
    if src in ("csv", "parquet"):
        from tfsidefuse.data.partitioned import list_partitions

        return list_partitions(path)
    return None  # demo data come from the config's parameters; tfds datasets are versioned by name


def prepare(
    config: RunConfig,
    *,
    overwrite: bool = False,
    runner: str | None = None,
    pipeline_options: dict | list | None = None,
) -> PreparedDataset:
    """Writes the prepared dataset of a config, or reuses it if it is up to date.

    With ``runner`` (a Beam runner: ``DirectRunner``, ``DataflowRunner``, ``FlinkRunner``, ...) the dataset is
    written by Apache Beam pipelines (:mod:`tfsidefuse.data.beam_prepare`; ``pipeline_options`` are passed to
    Beam), with the same content as the in-process path; without, in this process with pandas.

    A prepared directory's manifest records the dataset section and the hashes of the raw files it was made
    from. It is reused only when both are unchanged; otherwise the call fails (naming what changed) unless
    ``overwrite``. Temporary directories of killed ``prepare`` runs are removed first.

    Raises:
        PreparedDataError: the directory holds another dataset, was made from other raw files, is damaged or
            is not a prepared dataset.
    """
    ds_cfg = config.dataset
    target = ds_cfg.prepared_dir
    if ds_cfg.source == "prepared":
        return PreparedDataset.open(target)
    remove_stale_temp_dirs(target)
    # Through JSON, as the manifest keeps it: tuples and lists compare equal.
    dataset_config = json.loads(json.dumps(dataclasses.asdict(ds_cfg)))
    if dataset_config.get("columns") is None:
        dataset_config.pop("columns", None)  # only partitioned sources have it: older manifests stay current
    paths = raw_input_files(ds_cfg)
    raw = manifest_lib.raw_inputs(paths) if paths is not None else None
    if os.path.exists(target) and not overwrite:
        if not os.path.exists(os.path.join(target, SCHEMA_FILE)):
            raise PreparedDataError(
                f"dataset.prepared_dir {target!r} exists and is not a prepared dataset; choose another directory"
            )
        manifest = manifest_lib.read_manifest(target)
        if manifest.get("dataset_config") != dataset_config:
            previous = manifest.get("dataset_config") or {}
            changed = sorted(k for k in set(previous) | set(dataset_config) if previous.get(k) != dataset_config.get(k))
            raise PreparedDataError(
                f"{target} was prepared from a different dataset config (changed: "
                f"{['dataset.' + k for k in changed]}); pass --overwrite to replace it, or set another "
                "dataset.prepared_dir"
            )
        if manifest.get("raw_inputs") != raw:
            before = manifest.get("raw_inputs") or {}
            changed = sorted(n for n in set(before) | set(raw or {}) if before.get(n) != (raw or {}).get(n))
            raise PreparedDataError(
                f"the raw files changed since {target} was prepared: {changed} in {ds_cfg.path!r}; "
                "prepare again with --overwrite (runs trained on the old data then refuse to evaluate)"
            )
        logger.info("reusing prepared dataset %s", target)
        return PreparedDataset.open(target)
    if runner is not None:
        from tfsidefuse.data.beam_prepare import run_beam_prepare

        run_beam_prepare(
            ds_cfg,
            target,
            raw=None if ds_cfg.source in ("csv", "parquet") else read_raw(ds_cfg),
            runner=runner,
            options=pipeline_options,
            overwrite=overwrite or os.path.exists(target),
            raw_inputs=raw,
            dataset_config=dataset_config,
        )
        return PreparedDataset.open(target)
    raw_data = read_raw(ds_cfg)
    encoded = encode(raw_data, max_len=ds_cfg.max_len, k_core=ds_cfg.k_core, features=ds_cfg.features)
    write_prepared(
        encoded,
        target,
        num_shards=ds_cfg.num_shards,
        overwrite=overwrite or os.path.exists(target),
        raw_inputs=raw,
        dataset_config=dataset_config,
    )
    return PreparedDataset.open(target)


def create_model(config: RunConfig, prepared: PreparedDataset):
    """The compiled model of a config for a prepared dataset."""
    t = config.training
    sampled_softmax = make_sampled_softmax(t, prepared)
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
            objective=t.objective,
            exclude_history=t.exclude_history,
            train_metrics=t.train_metrics,
            sampled_softmax=sampled_softmax,
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


def make_sampled_softmax(training_config, prepared: PreparedDataset):
    """The :class:`~tfsidefuse.layers.SampledSoftmax` of ``training.loss: sampled_softmax``, or ``None``.

    The ``popularity`` and ``log_uniform`` samplers take the items' training counts from the prepared dataset
    (:func:`~tfsidefuse.evaluation.item_popularity`).

    Raises:
        ConfigError: ``num_negatives`` not below the number of items.
    """
    t = training_config
    if t.loss != "sampled_softmax":
        return None
    from tfsidefuse.layers.sampled_softmax import COUNT_SAMPLERS, SampledSoftmax

    num_items = prepared.schema.num_items
    if t.negatives() >= num_items:
        raise ConfigError(
            f"training.num_negatives must be below the number of item ids of {prepared.directory} "
            f"({num_items}), got {t.negatives()!r}"
        )
    sampler = t.sampler()
    return SampledSoftmax(
        num_items=num_items,
        num_negatives=t.negatives(),
        sampler=sampler,
        sampler_exponent=1.0 if t.sampler_exponent is None else t.sampler_exponent,
        item_counts=item_popularity(prepared) if sampler in COUNT_SAMPLERS else None,
        hard_negatives=t.hard_negatives,
        logq_correction=t.logq_correction or "all",
        seed=t.seed,
    )


def make_optimizer(training_config, model: keras.Model) -> keras.optimizers.Optimizer:
    """Adam (or ``LazyAdam``) with the config's learning rate and decoupled weight decay (none by default).

    With ``weight_decay`` > 0 (AdamW), biases and layer-norm parameters are not
    decayed; embedding tables and kernels are. With ``ema_momentum`` the
    optimizer also keeps the moving average of the weights (Keras' ``use_ema``).
    ``optimizer: lazy_adam`` updates only the gathered rows of embedding tables.
    """
    t = training_config
    ema = {"use_ema": True, "ema_momentum": t.ema_momentum} if t.ema_momentum is not None else {}
    adam = LazyAdam if t.optimizer == "lazy_adam" else keras.optimizers.Adam
    optimizer = adam(learning_rate=t.learning_rate, weight_decay=t.weight_decay or None, **ema)
    if t.weight_decay:
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if v.name in NOT_DECAYED])
    return optimizer


def training_datasets(config: RunConfig, prepared: PreparedDataset, file_shard: tuple | None = None) -> tuple:
    """The training and validation ``tf.data`` pipelines of a config (objective, buckets, XLA padding).

    With ``file_shard`` (workers, index) a worker of a multi-worker run reads its own shard files for training;
    validation always splits every batch of the whole stream, so that every user is evaluated once.
    """
    t = config.training
    # XLA compiles one program per shape (JAX always, TensorFlow with jit_compile): batches are then padded to
    # their bucket bound, so that a few shapes are compiled.
    common = {
        "cache": t.cache,
        "bucket_boundaries": t.length_buckets,
        "pad_to_max_len": fixed_batch_shapes(t.jit_compile),
    }
    train_ds = make_dataset(
        prepared,
        "train",
        objective=t.objective,
        batch_size=t.batch_size,
        seed=t.seed,
        shuffle_buffer=t.shuffle_buffer,
        file_shard=file_shard,
        **common,
    )
    valid_ds = make_dataset(prepared, "valid", objective="eval", batch_size=t.eval_batch_size, **common)
    # Under JAX's DataParallel the devices must divide every batch: the last ones get empty rows.
    return pad_batches(train_ds), pad_batches(valid_ds)


def config_datasets(config: RunConfig, prepared: PreparedDataset | None = None) -> tuple:
    """The ``(train, valid, test)`` ``tf.data`` pipelines of a config, as ``train`` and ``evaluate`` use them.

    The training pipeline follows the config's objective, batch size, seed and length buckets; validation and
    test yield ``(history, target)`` batches for full-ranking evaluation. The dataset is prepared first if needed.
    """
    prepared = prepared or prepare(config)
    t = config.training
    train_ds, valid_ds = training_datasets(config, prepared)
    test_ds = make_dataset(
        prepared,
        "test",
        objective="eval",
        batch_size=t.eval_batch_size,
        cache=t.cache,
        bucket_boundaries=t.length_buckets,
    )
    return train_ds, valid_ds, test_ds


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns (and writes to ``<run_dir>/metrics.json``)."""

    model: keras.Model
    history: dict
    metrics: dict

    def summary_rows(self) -> dict[str, dict[str, float]]:
        return {k: v for k, v in self.metrics.items() if isinstance(v, dict)}


def _config_text(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _changed_keys(previous: dict, current: dict) -> list[str]:
    # Through YAML, as the saved file went: tuples and lists compare equal.
    current = yaml.safe_load(yaml.safe_dump(current, sort_keys=False))
    return sorted(
        f"{section}.{key}"
        for section in set(previous) | set(current)
        for key in set(previous.get(section) or {}) | set(current.get(section) or {})
        if (previous.get(section) or {}).get(key) != (current.get(section) or {}).get(key)
    )


def _saved_config(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            saved = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        raise RunDirError(f"{path}: not valid YAML ({err}); the run directory is damaged") from None
    if not isinstance(saved, dict):
        raise RunDirError(f"{path}: expected a config mapping, got {type(saved).__name__}")
    return saved


def check_run_dir(run_dir: str, config: RunConfig, *, overwrite: bool = False) -> None:
    """Refuses a run directory that holds another run, before anything is written to it.

    - An interrupted run (``backup/``) of another config: its backup would silently continue the old training.
    - A finished run of another config: its ``model.keras`` and ``metrics.json`` would be replaced by
      another model's (allowed with ``overwrite``).
    - A non-empty directory that is not a run directory (allowed with ``overwrite``).

    The same config may train again in its own directory: an interrupted run resumes, a finished one is
    replaced by the new training.

    With ``overwrite``, everything a run of another config left is replaced (the new training starts over).

    Raises:
        ConfigError: an interrupted run of another config.
        RunDirError: a finished run of another config, or foreign files.
    """
    if not os.path.exists(run_dir):
        return
    if not os.path.isdir(run_dir):
        raise RunDirError(f"training.run_dir {run_dir!r} is a file, not a directory")
    saved = _saved_config(run_dir)
    changed = _changed_keys(saved, config.to_dict()) if saved is not None else None
    if overwrite:
        return
    if os.path.isdir(os.path.join(run_dir, "backup")) and changed:
        raise ConfigError(
            f"training.run_dir {run_dir!r} holds an interrupted run of a different config (changed: {changed}); "
            "resume it with its own config, choose another run_dir, or pass --overwrite to start over"
        )
    if saved is None:
        foreign = sorted(n for n in os.listdir(run_dir) if not n.startswith("."))
        if foreign:
            raise RunDirError(
                f"training.run_dir {run_dir!r} is not empty and holds no run ({foreign[:5]}); choose another "
                "run_dir or pass --overwrite"
            )
        return
    finished = os.path.exists(os.path.join(run_dir, MODEL_FILE)) or os.path.exists(os.path.join(run_dir, METRICS_FILE))
    if changed and finished:
        raise RunDirError(
            f"training.run_dir {run_dir!r} holds a finished run of a different config (changed: {changed}); "
            "choose another run_dir, or pass --overwrite to replace it"
        )


def _clear_run_dir(run_dir: str) -> None:
    """Removes what an earlier run left (model, metrics, history, logs, backup) before another config trains."""
    for name in RUN_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def _save_model(model: keras.Model, path: str) -> None:
    """Saves a model so that ``path`` holds the old model or the new one, never a part."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def train(
    config: RunConfig,
    prepared: PreparedDataset | None = None,
    *,
    evaluate_test: bool = True,
    callbacks: list[keras.callbacks.Callback] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Trains a model from a config; restores the best validation weights.

    ``callbacks`` are added to the config's own (early stopping, checkpoints,
    logs, timing) and run after them.

    The config is validated, the dataset opened and the model built before
    anything is written to the run directory. A directory that holds a
    finished run of another config is refused unless ``overwrite`` (see
    :func:`check_run_dir`). Writes ``model.keras``, ``config.yaml``,
    ``history.csv``, TensorBoard logs and ``metrics.json`` (best validation and
    test metrics, epochs, timing, the prepared dataset's fingerprint);
    ``config.yaml``, ``model.keras`` and ``metrics.json`` are each replaced
    atomically. A killed run resumes from its last finished epoch when trained
    again with the same config; with another config it is an error (its backup
    would continue the old training).
    """
    config.validate()
    t = config.training
    run_dir = t.run_dir
    # A multi-worker strategy configures TensorFlow's collectives: it comes before any other TensorFlow work.
    strategy = distribution.make_strategy(t.distribution, t.devices)
    chief = distribution.is_chief(t.distribution)
    if chief:
        check_run_dir(run_dir, config, overwrite=overwrite)
        # The workers of a multi-worker run read the dataset that `prepare` wrote before they started.
        prepared = prepared or (prepare(config) if t.distribution != "multi_worker" else None)
    prepared = prepared or _open_prepared_for_worker(config)
    keras.utils.set_random_seed(t.seed)
    with distribution.scope(strategy):
        return _train_in_scope(config, prepared, strategy, chief, evaluate_test, callbacks, overwrite)


def _open_prepared_for_worker(config: RunConfig) -> PreparedDataset:
    """The prepared dataset a worker of a multi-worker run reads: it must exist (one ``prepare`` before the run)."""
    target = config.dataset.prepared_dir
    if not os.path.exists(os.path.join(target, SCHEMA_FILE)):
        raise PreparedDataError(
            f"dataset.prepared_dir {target!r} is not prepared: with training.distribution='multi_worker', run "
            "`tfsidefuse prepare` once before starting the workers"
        )
    return PreparedDataset.open(target)


def _train_in_scope(config, prepared, strategy, chief, evaluate_test, callbacks, overwrite) -> TrainResult:
    """The body of :func:`train`, inside the distribution's scope; only the chief writes the run directory."""
    t = config.training
    run_dir = t.run_dir
    own_files = distribution.file_shard(t, prepared)
    train_ds, valid_ds = training_datasets(config, prepared, own_files)
    model = create_model(config, prepared)
    if own_files is not None:
        distribution.all_reduce_dense(model.optimizer)
    distribution.build_state(model, valid_ds, strategy)
    per_epoch = count_examples(prepared, "train", t.objective, prepared.schema.max_len)

    # Everything is checked: from here on the run directory is written (by the chief; every other worker keeps
    # its own backup and logs under <run_dir>/.workers/).
    own_dir = run_dir if chief else distribution.worker_dir(run_dir, t.distribution)
    os.makedirs(own_dir, exist_ok=True)
    if chief:
        manifest_lib.remove_stale_temp_files(run_dir)  # of a run killed while it saved
        saved = _saved_config(run_dir)
        if overwrite and saved is not None and _changed_keys(saved, config.to_dict()):
            _clear_run_dir(run_dir)
        manifest_lib.atomic_write_text(os.path.join(run_dir, CONFIG_FILE), _config_text(config))
    own = t if chief else dataclasses.replace(t, run_dir=own_dir)
    callbacks = default_callbacks(own, examples_per_epoch=per_epoch) + list(callbacks or [])

    start = time.perf_counter()
    with reading(prepared):
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
        "valid": evaluate_model(model, prepared, "valid", batch_size=t.eval_batch_size, item_block=t.eval_item_block),
    }
    if evaluate_test:
        metrics["test"] = evaluate_model(
            model, prepared, "test", batch_size=t.eval_batch_size, item_block=t.eval_item_block
        )
    # What the model was trained on and with: `evaluate` and `export` check both before they use the model.
    metrics["dataset_fingerprint"] = prepared.fingerprint
    metrics["config_sha256"] = hashlib.sha256(_config_text(config).encode()).hexdigest()
    if t.distribution not in (None, "none"):
        metrics["replicas"] = distribution.replica_count(strategy)
    if not chief:
        # Saving runs collective operations that every worker joins; a worker other than the chief saves to its
        # own directory and removes the copy.
        copy = os.path.join(own_dir, MODEL_FILE)
        _save_model(model, copy)
        os.remove(copy)
        return TrainResult(model=model, history=dict(history.history), metrics=metrics)
    # The model first, then the metrics that describe it: a run killed in between has no metrics.json, and
    # `evaluate` / `export` never pair a new model with old metrics or an old config.
    if os.path.exists(os.path.join(run_dir, METRICS_FILE)):
        os.remove(os.path.join(run_dir, METRICS_FILE))
    _save_model(model, os.path.join(run_dir, MODEL_FILE))
    if os.path.exists(os.path.join(run_dir, HISTORY_PARTIAL_FILE)):
        os.replace(os.path.join(run_dir, HISTORY_PARTIAL_FILE), os.path.join(run_dir, HISTORY_FILE))
    manifest_lib.atomic_write_text(os.path.join(run_dir, METRICS_FILE), json.dumps(metrics, indent=2))
    return TrainResult(model=model, history=dict(history.history), metrics=metrics)


def load_trained(run_dir: str, prepared: PreparedDataset | None = None) -> keras.Model:
    """Loads the model a run saved, after checking that the run directory describes it.

    Checks, where the run recorded them: that ``config.yaml`` is the config the model was trained with (its
    hash in ``metrics.json``), that the model is the config's model, and that ``prepared`` is the dataset it
    was trained on (its fingerprint).

    Raises:
        FileNotFoundError: there is no model.
        RunDirError: the run's files do not belong together, or the dataset differs.
    """
    path = os.path.join(run_dir, MODEL_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no trained model in {run_dir} (expected {MODEL_FILE}); run `tfsidefuse train` first")
    metrics = {}
    metrics_path = os.path.join(run_dir, METRICS_FILE)
    if os.path.exists(metrics_path):
        try:
            with open(metrics_path) as fh:
                metrics = json.load(fh)
        except (OSError, json.JSONDecodeError) as err:
            raise RunDirError(f"{metrics_path}: unreadable ({err}); the run directory is damaged") from None
    config_path = os.path.join(run_dir, CONFIG_FILE)
    recorded = metrics.get("config_sha256")
    if recorded and os.path.exists(config_path):
        with open(config_path, "rb") as fh:
            if hashlib.sha256(fh.read()).hexdigest() != recorded:
                raise RunDirError(
                    f"{config_path} is not the config {path} was trained with (it changed after training); "
                    "train again, or restore the run's config.yaml"
                )
    if prepared is not None and metrics.get("dataset_fingerprint") and prepared.fingerprint:
        if metrics["dataset_fingerprint"] != prepared.fingerprint:
            raise RunDirError(
                f"{path} was trained on another version of the prepared dataset {prepared.directory} "
                f"(fingerprint {metrics['dataset_fingerprint'][:12]}…, now {prepared.fingerprint[:12]}…): "
                "it was prepared again since; train the model again"
            )
    model = keras.models.load_model(path)
    saved = _saved_config(run_dir)
    name = (saved or {}).get("model", {}).get("name") if isinstance((saved or {}).get("model"), dict) else None
    expected = BACKBONES.get(name) if name else None
    backbone = getattr(model, "backbone", None)
    if expected is not None and backbone is not None and type(backbone) is not expected:
        raise RunDirError(
            f"{path} holds a {type(backbone).__name__} model but {config_path} describes model {name!r}; "
            "the run directory mixes two runs"
        )
    return model


def evaluate(config: RunConfig, split: str = "test", *, with_baseline: bool = True) -> dict[str, dict[str, float]]:
    """Evaluates the trained model of a config's run directory (and the most-popular baseline)."""
    prepared = PreparedDataset.open(config.dataset.prepared_dir)
    run_dir = config.training.run_dir
    saved = _saved_config(run_dir)
    if saved is not None:
        changed = [k for k in _changed_keys(saved, config.to_dict()) if k.split(".")[0] == "model"]
        if changed:
            raise RunDirError(
                f"training.run_dir {run_dir!r} holds a run of another model config (changed: {changed}); "
                "evaluate it with its own config.yaml"
            )
    model = load_trained(run_dir, prepared)
    rows = {
        f"{config.model.name} ({split})": evaluate_model(
            model,
            prepared,
            split,
            batch_size=config.training.eval_batch_size,
            item_block=config.training.eval_item_block,
        )
    }
    if with_baseline:
        rows[f"most-popular ({split})"] = evaluate_most_popular(prepared, split)
    return rows
