"""YAML run configuration: ``dataset``, ``model`` and ``training`` sections.

Every mistake (unknown key, wrong type, bad value, missing file) is reported
when the configuration is loaded, before any work starts, with the key and
the value. Relative paths are resolved against the current directory.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing
from typing import Any

import yaml

from tfsidefuse.errors import ConfigError  # noqa: F401  (re-exported: ``from tfsidefuse.config import ConfigError``)

SOURCES = ("demo", "s3rec", "recbole", "tfds", "csv", "parquet", "prepared")
OBJECTIVES = ("all_positions", "all_targets", "prefix")
LR_SCHEDULES = ("constant", "cosine")
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
INPUT_SHARDINGS = ("auto", "files", "data")
MONITORED = ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr")
LOSSES = ("full_softmax", "sampled_softmax")
OPTIMIZERS = ("adam", "lazy_adam")
LOGQ_CORRECTIONS = ("all", "negatives", "none")
NEGATIVE_SAMPLERS = ("in_batch", "uniform", "log_uniform", "popularity")
#: Defaults of the sampled-softmax options (``null`` in a config means the default).
DEFAULT_NUM_NEGATIVES = 100
DEFAULT_NEGATIVE_SAMPLER = "uniform"


@dataclasses.dataclass
class DatasetConfig:
    """Where the data comes from and where the prepared dataset goes.

    Args:
        source: ``demo`` (built-in synthetic data), ``s3rec`` (``sequences.txt`` +
            ``item_attributes.json``), ``recbole`` (atomic files), ``tfds``
            (MovieLens through tensorflow-datasets), ``csv`` / ``parquet`` (a log
            partitioned into files, ``path`` a glob of them) or ``prepared`` (an
            existing prepared directory, given as ``prepared_dir``).
        prepared_dir: the prepared dataset directory (written by ``prepare``).
        path: the raw data directory (``s3rec``, ``recbole``), or a glob of the
            partition files (``csv``, ``parquet``; ``**`` matches folders).
        name: the RecBole file stem or the tfds dataset name.
        max_len: most recent events kept per sequence.
        k_core: keep users and items with at least this many interactions.
        features: side features to keep (default: all the reader declares).
        num_shards: TFRecord files per split.
        demo: keyword arguments of ``make_demo_dataset`` (``demo`` source).
        columns: for ``csv`` / ``parquet``: the column names of the roles ``user``,
            ``item`` and ``time`` (defaults: the role names; ``time`` is optional).
    """

    source: str
    prepared_dir: str
    path: str | None = None
    name: str | None = None
    max_len: int = 50
    k_core: int | None = None
    features: list[str] | None = None
    num_shards: int = 4
    demo: dict | None = None
    columns: dict | None = None

    def validate(self) -> None:
        _one_of("dataset.source", self.source, SOURCES)
        _positive("dataset.max_len", self.max_len)
        _positive("dataset.num_shards", self.num_shards)
        if self.k_core is not None:
            _positive("dataset.k_core", self.k_core)
        if self.source in ("s3rec", "recbole"):
            if not self.path:
                raise ConfigError(f"dataset.path is required for source {self.source!r}")
            if not os.path.isdir(self.path):
                raise ConfigError(f"dataset.path: directory not found: {self.path!r}")
        if self.source == "s3rec":
            for fname in ("sequences.txt", "item_attributes.json"):
                if not os.path.exists(os.path.join(self.path, fname)):
                    raise ConfigError(f"dataset.path: {self.path!r} has no {fname}")
        if self.source == "recbole":
            stem = self.name or os.path.basename(os.path.normpath(self.path))
            inter = os.path.join(self.path, f"{stem}.inter")
            if not os.path.exists(inter):
                raise ConfigError(f"dataset.name: file not found: {inter!r}")
        if self.source in ("csv", "parquet"):
            from tfsidefuse.data.partitioned import column_roles, list_partitions

            if not self.path:
                raise ConfigError(f"dataset.path is required for source {self.source!r} (a glob of the files)")
            list_partitions(self.path)
            column_roles(self.columns)
        elif self.columns is not None:
            raise ConfigError(f"dataset.columns is only allowed with source 'csv' or 'parquet', got {self.source!r}")
        if self.source == "prepared" and not os.path.exists(os.path.join(self.prepared_dir, "schema.yaml")):
            raise ConfigError(f"dataset.prepared_dir: not a prepared dataset: {self.prepared_dir!r}")
        if self.demo is not None and self.source != "demo":
            raise ConfigError(f"dataset.demo is only allowed with source 'demo', got source {self.source!r}")
        if self.demo:
            from tfsidefuse.data.demo import make_demo_dataset

            _check_kwargs("dataset.demo", self.demo, make_demo_dataset, exclude=())


@dataclasses.dataclass
class ModelConfig:
    """The model: ``name`` plus the backbone's hyper-parameters (``params``).

    In YAML the hyper-parameters sit beside ``name``::

        model:
          name: sasrec
          hidden_dim: 64
    """

    name: str = "sasrec"
    params: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        from tfsidefuse.models.registry import (
            BACKBONES,
            FEATURES_PARAM,
            side_feature_params,
            split_task_params,
            task_params_owner,
        )

        _one_of("model.name", self.name, tuple(BACKBONES))
        backbone = BACKBONES[self.name]
        # Side features are derived from the dataset schema; a config only selects them by name.
        derived = side_feature_params(backbone)
        params = self.params
        if derived and isinstance(params, dict) and FEATURES_PARAM in params:
            features = params[FEATURES_PARAM]
            if not isinstance(features, list) or not all(isinstance(n, str) for n in features):
                raise ConfigError(f"model.{FEATURES_PARAM}: expected a list of feature names, got {features!r}")
            params = {k: v for k, v in params.items() if k != FEATURES_PARAM}
        # Task params configure the `MaskedItemModel` of Cloze backbones (`mask_prob`, ...) or a model's auxiliary
        # head (`lambda_attr`, `rsa_weight`, `iaa_weight`, ...), not the backbone.
        params, task_params = split_task_params(self.name, params)
        # Every backbone passes its keyword arguments down to `SASRecBackbone`, which numbers the positions.
        declared = inspect.signature(backbone).parameters
        own = {k: v for k, v in params.items() if k in declared or k not in INHERITED_MODEL_PARAMS}
        _check_kwargs("model", own, backbone, exclude=("num_items", "max_len", *derived))
        params.update(own)  # keep the values `_check_kwargs` coerced
        if task_params:
            owner, exclude = task_params_owner(self.name)
            _check_kwargs("model", task_params, owner, exclude=exclude)
        for key, choices in _model_choices().items():
            for checked in (params, task_params):
                if key in checked:
                    _one_of(f"model.{key}", checked[key], choices)
        if params is not self.params:
            self.params.update({**params, **task_params})  # keep the values `_check_kwargs` coerced


@dataclasses.dataclass
class TrainingConfig:
    """How to train and evaluate.

    Args:
        run_dir: where the model, logs, checkpoints and metrics go.
        epochs: maximum number of epochs.
        batch_size: training examples per batch.
        eval_batch_size: evaluation examples per batch.
        learning_rate: Adam learning rate.
        optimizer: ``adam`` (default, ``keras.optimizers.Adam``) or
            ``lazy_adam`` (``tfsidefuse.LazyAdam``: the rows of an embedding
            table that a step gathered are updated, with their moments, and the
            others left as they are, so a step's cost does not grow with the
            catalogue; for ``sampled_softmax`` on large catalogues; the same as
            ``adam`` under the JAX backend, whose gradients are dense).
        weight_decay: decoupled weight decay of Adam (AdamW; 0 = none, as the
            papers); biases and layer-norm scales and offsets are not decayed.
        reduce_lr_factor: multiply the learning rate by this factor (in
            ``(0, 1)``) when the monitored validation metric has not improved
            for ``reduce_lr_patience`` validations; ``null`` (default) keeps
            it constant, as the papers.
        reduce_lr_patience: validations without improvement before each
            reduction.
        min_learning_rate: the learning rate is never reduced below this.
        lr_schedule: ``constant`` (default, as the papers) or ``cosine``: the
            learning rate of epoch ``e`` (from 0) is ``min_learning_rate +
            (learning_rate - min_learning_rate) * (1 + cos(pi * e / epochs)) / 2``,
            a decay over the whole epoch budget (``training.epochs``) for runs
            with a fixed time; not combined with ``reduce_lr_factor``.
        objective: ``all_positions`` (one example per user, loss at every
            position of its most recent ``max_len`` events), ``all_targets``
            (as ``all_positions``, with a sequence of more than ``max_len``
            targets cut into windows of ``max_len`` events ending every
            ``max_len // 2`` targets, each trained on its newest half, so that
            every target is trained on once, with at least half a window of
            history, as with ``prefix``) or ``prefix`` (every prefix an
            example, loss at its end).
        eval_every: validate every this many epochs.
        monitor: validation metric for early stopping and model selection.
        patience: validations without improvement before stopping.
        seed: seed of initialisation, dropout and shuffling.
        shuffle_buffer: examples in the shuffle buffer.
        cache: cache parsed records in memory.
        exclude_history: rank only items not in the input sequence (off by
            default, as in the papers).
        train_metrics: also compute the ranking metrics on the training
            batches (off by default: training logs carry the loss, validation
            logs every metric).
        steps_per_epoch: cap on training steps per epoch (default: one pass).
        verbose: Keras progress output (``auto``, 0, 1 or 2).
        length_buckets: batch training and evaluation examples by length:
            ``auto`` (geometric bucket bounds up to ``max_len``), a list of
            ascending bounds, or ``null`` for random batches padded to their
            longest sequence.
        jit_compile: compile the training step with XLA; batches are then
            padded to their bucket bound so that only a few shapes occur, and
            every slot (padding included) is scored.
        mixed_precision: compute in float16 (float32 weights, softmax and
            logits), for GPUs.
        ema_momentum: keep an exponential moving average of the weights
            (Polyak averaging, updated after every step with this momentum,
            in ``(0, 1)``) and validate, select, save and export the averaged
            weights; training steps still update the raw weights. ``null``
            (default, as the papers) trains and keeps the raw weights.
        distribution: ``null`` or ``none`` (default, one device),
            ``mirrored`` (the devices of one host,
            ``tf.distribute.MirroredStrategy``), ``multi_worker`` (several
            hosts configured by ``TF_CONFIG``,
            ``tf.distribute.MultiWorkerMirroredStrategy``), both on the
            TensorFlow backend; ``batch_size`` stays the global batch
            (docs/scaling.md).
        input_sharding: how the workers of ``multi_worker`` (TensorFlow
            backend) split the training data: ``files`` (each worker reads
            only its own shard files of the prepared dataset; the workers'
            batches then differ from one process's), ``data`` (every worker
            reads the whole stream and keeps its part of each global batch: the
            batches of one process), or ``auto`` (default: ``files`` when the
            prepared dataset has at least one training shard per worker, else
            ``data``). Validation and test always use ``data``, and JAX's
            multi-process runs always do.
        devices: the devices of ``mirrored`` (e.g. ``["/gpu:0", "/gpu:1"]``);
            default every GPU of the host, else its CPU.
        loss: ``full_softmax`` (default, also written ``null``: every item in the softmax) or
            ``sampled_softmax`` (the target and ``num_negatives`` sampled items
            shared by the batch, with the logQ correction and accidental hits
            removed; validation and evaluation still rank every item).
        num_negatives: sampled negatives per step (``sampled_softmax``;
            default 100), below the number of items.
        negative_sampler: ``in_batch``, ``uniform`` (default), ``log_uniform``
            or ``popularity`` (``sampled_softmax``).
        sampler_exponent: the ``popularity`` sampler draws items in proportion
            to ``count ** sampler_exponent`` (default 1.0).
        hard_negatives: keep only this many of the hardest sampled negatives
            per slot (``sampled_softmax``; below ``num_negatives``).
        logq_correction: ``all`` (default: every logit minus ``log q``, the
            target's too), ``negatives`` (the target keeps its logit, each
            negative's minus ``log(num_negatives q)``: the importance-sampling
            estimate of the full softmax) or ``none`` (``sampled_softmax``;
            docs/training.md#sampled-softmax).
        eval_item_block: score this many items at a time in the final
            validation and test evaluation (memory ``eval_batch_size x
            eval_item_block`` instead of ``eval_batch_size x num_items``; the
            metrics are the same); ``null`` (default) scores all at once.
    """

    run_dir: str
    epochs: int = 200
    batch_size: int = 256
    eval_batch_size: int = 512
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    reduce_lr_factor: float | None = None
    reduce_lr_patience: int = 3
    min_learning_rate: float = 0.0
    lr_schedule: str = "constant"
    objective: str = "all_positions"
    eval_every: int = 1
    monitor: str = "ndcg@20"
    patience: int = 10
    seed: int = 42
    shuffle_buffer: int = 10_000
    cache: bool = True
    exclude_history: bool = False
    train_metrics: bool = False
    steps_per_epoch: int | None = None
    verbose: Any = "auto"
    length_buckets: Any = "auto"
    jit_compile: bool = False
    mixed_precision: bool = False
    ema_momentum: float | None = None
    loss: str | None = None
    num_negatives: int | None = None
    negative_sampler: str | None = None
    sampler_exponent: float | None = None
    hard_negatives: int | None = None
    logq_correction: str | None = None
    eval_item_block: int | None = None
    distribution: str | None = None
    input_sharding: str = "auto"
    devices: list[str] | None = None

    def validate(self) -> None:
        for key in (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "eval_every",
            "patience",
            "shuffle_buffer",
            "reduce_lr_patience",
        ):
            _positive(f"training.{key}", getattr(self, key))
        if self.steps_per_epoch is not None:
            _positive("training.steps_per_epoch", self.steps_per_epoch)
        if not self.learning_rate > 0:
            raise ConfigError(f"training.learning_rate must be > 0, got {self.learning_rate!r}")
        _one_of("training.optimizer", self.optimizer, OPTIMIZERS)
        if not self.weight_decay >= 0:
            raise ConfigError(f"training.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.reduce_lr_factor is not None and not 0 < self.reduce_lr_factor < 1:
            raise ConfigError(f"training.reduce_lr_factor must be in (0, 1) or null, got {self.reduce_lr_factor!r}")
        if not 0 <= self.min_learning_rate < self.learning_rate:
            raise ConfigError(
                f"training.min_learning_rate must be >= 0 and below learning_rate={self.learning_rate!r}, "
                f"got {self.min_learning_rate!r}"
            )
        _one_of("training.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.lr_schedule != "constant" and self.reduce_lr_factor is not None:
            raise ConfigError(
                f"training.lr_schedule={self.lr_schedule!r} sets the learning rate of every epoch; "
                f"it cannot be combined with training.reduce_lr_factor={self.reduce_lr_factor!r}"
            )
        _one_of("training.objective", self.objective, OBJECTIVES)
        _one_of("training.monitor", self.monitor, MONITORED)
        _one_of("training.verbose", self.verbose, ("auto", 0, 1, 2))
        buckets = self.length_buckets
        if not (
            buckets is None
            or buckets == "auto"
            or (
                isinstance(buckets, list)
                and buckets
                and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in buckets)
                and buckets == sorted(set(buckets))
            )
        ):
            raise ConfigError(
                f"training.length_buckets must be 'auto', null or a list of ascending positive ints, got {buckets!r}"
            )
        for key in ("jit_compile", "mixed_precision"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"training.{key} must be true or false, got {getattr(self, key)!r}")
        ema = self.ema_momentum
        if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 < ema < 1):
            raise ConfigError(f"training.ema_momentum must be a number in (0, 1) or null, got {ema!r}")
        self._validate_loss()
        self._validate_distribution()
        if self.eval_item_block is not None:
            _positive("training.eval_item_block", self.eval_item_block)

    def _validate_distribution(self) -> None:
        if self.distribution is not None:
            _one_of("training.distribution", self.distribution, DISTRIBUTIONS)
        _one_of("training.input_sharding", self.input_sharding, INPUT_SHARDINGS)
        devices = self.devices
        if devices is None:
            return
        if not isinstance(devices, list) or not devices or not all(isinstance(d, str) and d for d in devices):
            raise ConfigError(f"training.devices must be a non-empty list of device names or null, got {devices!r}")
        if self.distribution != "mirrored":
            raise ConfigError(f"training.devices applies to distribution 'mirrored', not {self.distribution!r}")

    def _validate_loss(self) -> None:
        # `null` is the default, full_softmax: run directories written before the key existed keep their config.
        if self.loss is not None:
            _one_of("training.loss", self.loss, LOSSES)
        options = ("num_negatives", "negative_sampler", "sampler_exponent", "hard_negatives", "logq_correction")
        if self.loss != "sampled_softmax":
            for key in options:
                if getattr(self, key) is not None:
                    raise ConfigError(
                        f"training.{key}={getattr(self, key)!r} needs training.loss: sampled_softmax "
                        f"(training.loss is {self.loss or 'full_softmax'!r})"
                    )
            return
        if self.num_negatives is not None:
            _positive("training.num_negatives", self.num_negatives)
        if self.negative_sampler is not None:
            _one_of("training.negative_sampler", self.negative_sampler, NEGATIVE_SAMPLERS)
        exponent = self.sampler_exponent
        if exponent is not None:
            if self.sampler() != "popularity":
                raise ConfigError(
                    f"training.sampler_exponent={exponent!r} needs training.negative_sampler: popularity "
                    f"(training.negative_sampler is {self.sampler()!r})"
                )
            if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not exponent >= 0:
                raise ConfigError(f"training.sampler_exponent must be a number >= 0, got {exponent!r}")
        if self.logq_correction is not None:
            _one_of("training.logq_correction", self.logq_correction, LOGQ_CORRECTIONS)
        if self.hard_negatives is not None:
            _positive("training.hard_negatives", self.hard_negatives)
            if self.hard_negatives >= self.negatives():
                raise ConfigError(
                    f"training.hard_negatives must be below training.num_negatives={self.negatives()}, "
                    f"got {self.hard_negatives!r}"
                )

    def negatives(self) -> int:
        """The sampled negatives per step (``num_negatives`` or its default)."""
        return DEFAULT_NUM_NEGATIVES if self.num_negatives is None else self.num_negatives

    def sampler(self) -> str:
        """The negative sampler (``negative_sampler`` or its default)."""
        return DEFAULT_NEGATIVE_SAMPLER if self.negative_sampler is None else self.negative_sampler


@dataclasses.dataclass
class RunConfig:
    """A whole run: dataset, model, training."""

    dataset: DatasetConfig
    model: ModelConfig
    training: TrainingConfig
    source_path: str | None = None

    def validate(self) -> None:
        self.dataset.validate()
        self.model.validate()
        self.training.validate()
        buckets = self.training.length_buckets
        if isinstance(buckets, list) and buckets[-1] > self.dataset.max_len:
            raise ConfigError(
                f"training.length_buckets: bound {buckets[-1]} exceeds dataset.max_len={self.dataset.max_len}"
            )

    def to_dict(self) -> dict:
        return {
            "dataset": dataclasses.asdict(self.dataset),
            "model": {"name": self.model.name, **self.model.params},
            "training": dataclasses.asdict(self.training),
        }

    @classmethod
    def from_dict(cls, data: Any, source_path: str | None = None, validate: bool = True) -> RunConfig:
        """The config of a mapping; with ``validate=False`` only keys and types are checked (no paths or ranges)."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping with dataset/model/training sections, got {data!r}")
        _check_keys("config", data, ("dataset", "model", "training"))
        for section in ("dataset", "training"):
            if section not in data:
                raise ConfigError(f"config: missing section {section!r}")
        dataset = _build("dataset", DatasetConfig, data["dataset"])
        model_data = dict(data.get("model") or {})
        if not isinstance(data.get("model", {}), (dict, type(None))):
            raise ConfigError(f"model: expected a mapping, got {data['model']!r}")
        name = model_data.pop("name", "sasrec")
        model = ModelConfig(name=name, params=model_data)
        training = _build("training", TrainingConfig, data["training"])
        config = cls(dataset=dataset, model=model, training=training, source_path=source_path)
        if validate:
            config.validate()
        return config


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> RunConfig:
    """Loads and validates a YAML run configuration.

    Args:
        path: the YAML file, or the name of a shipped preset (``demo/sasrec``; see :mod:`tfsidefuse.presets`).
        overrides: dotted keys to override, e.g. ``{"training.epochs": 3}``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        from tfsidefuse.presets import preset_path

        preset = preset_path(path)
        if preset is None:
            raise ConfigError(f"config file not found: {path!r} (nor a preset name; `tfsidefuse presets` lists them)")
        path = preset
    with open(path, "rb") as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise ConfigError(f"config {path!r} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(
            f"config {path!r} must be a mapping with dataset/model/training sections, got {type(data).__name__} "
            f"{data!r:.80}"
        )
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key or not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"override {dotted!r}: expected section.key")
        data.setdefault(section, {})[key] = value
    try:
        return RunConfig.from_dict(data, source_path=path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# ----------------------------------------------------------------------------- helpers


def _check_keys(where: str, data: dict, allowed) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def _positive(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    check = origin or annotation
    return isinstance(check, type) and isinstance(value, check)


def _build(section: str, cls, data: Any):
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(section, data, fields)
    hints = typing.get_type_hints(cls)
    data = {key: _coerce_float(value, hints[key]) for key, value in data.items()}
    for key, value in data.items():
        if not _type_ok(value, hints[key]):
            expected = getattr(hints[key], "__name__", None) or str(hints[key])
            raise ConfigError(f"{section}.{key}: expected {expected}, got {value!r} ({type(value).__name__})")
    missing = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in data
    ]
    if missing:
        raise ConfigError(f"{section}: missing required key(s) {missing}")
    return cls(**data)


def _coerce_float(value: Any, annotation: Any) -> Any:
    """YAML reads ``1e-3`` as a string (it wants ``1.0e-3``): accept it where a float is expected."""
    wants_float = annotation is float or float in typing.get_args(annotation)
    if wants_float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if wants_float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


#: Model params that every backbone accepts through its keyword arguments (see `SASRecBackbone`).
INHERITED_MODEL_PARAMS = ("position_order",)


def _model_choices() -> dict[str, tuple]:
    """Model params whose allowed values are the same in every model that has them."""
    from tfsidefuse.layers.position_embedding import POSITION_ORDERS
    from tfsidefuse.models.difsr.difsr_attribute_head import PREDICTOR_BIASES

    return {"position_order": POSITION_ORDERS, "attribute_predictor_bias": PREDICTOR_BIASES}


def _check_kwargs(where: str, params: dict, fn, exclude: tuple) -> None:
    """Checks keyword arguments against a callable's signature (names and default types)."""
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: expected a mapping, got {params!r}")
    sig = inspect.signature(fn)
    allowed = {
        n: p
        for n, p in sig.parameters.items()
        if n not in exclude and n not in ("self", "kwargs") and p.kind != p.VAR_KEYWORD
    }
    _check_keys(where, params, allowed)
    for key, value in list(params.items()):
        default = allowed[key].default
        if default is inspect.Parameter.empty or default is None:
            continue
        expected = float if isinstance(default, float) else type(default)
        value = params[key] = _coerce_float(value, expected)
        if not _type_ok(value, expected):
            raise ConfigError(f"{where}.{key}: expected {expected.__name__}, got {value!r} ({type(value).__name__})")
