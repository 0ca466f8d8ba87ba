"""The entry points of ``import tfsidefuse``: from a config (a YAML file, a preset name or a ``RunConfig``) to
a prepared dataset, its ``tf.data`` pipelines, a ready-to-fit model, a trained run and its SavedModel.

    import tfsidefuse

    config = tfsidefuse.load_config("demo/sasrec_f")             # a preset; or a path to a YAML file
    prepared = tfsidefuse.prepare(config)                        # raw data -> TFRecords (reused when up to date)
    train_ds, valid_ds, test_ds = tfsidefuse.datasets(config, prepared)
    model = tfsidefuse.create_model(config, prepared)            # compiled: optimizer, loss, ranking metrics
    model.fit(train_ds, validation_data=valid_ds, epochs=10)
    model.evaluate(test_ds, return_dict=True)
"""

from __future__ import annotations

import os
from typing import Any

import keras

from tfsidefuse.config import RunConfig, load_config
from tfsidefuse.data.prepared import PreparedDataset
from tfsidefuse.errors import ConfigError
from tfsidefuse.training import trainer


def as_config(config: RunConfig | str | os.PathLike | dict, overrides: dict | None = None) -> RunConfig:
    """A :class:`RunConfig` from a config object, a YAML path, a preset name or a dict of the three sections.

    ``overrides`` (``{"training.epochs": 3}``) apply to paths, presets and dicts.
    """
    if isinstance(config, RunConfig):
        if overrides:
            raise ConfigError("overrides apply to a config file, a preset or a dict, not to a RunConfig object")
        return config
    if isinstance(config, dict):
        data = {section: dict(values or {}) for section, values in config.items()}
        for dotted, value in (overrides or {}).items():
            section, _, key = dotted.partition(".")
            data.setdefault(section, {})[key] = value
        return RunConfig.from_dict(data)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config, overrides)
    raise ConfigError(f"config must be a RunConfig, a YAML path, a preset name or a dict, got {type(config).__name__}")


def prepare(
    config: Any, *, overwrite: bool = False, runner: str | None = None, pipeline_options: dict | list | None = None
) -> PreparedDataset:
    """The prepared dataset of a config: written from the raw data, or reused when up to date (see
    :func:`tfsidefuse.training.trainer.prepare`); ``runner="DirectRunner"`` (or any Beam runner, with
    ``pipeline_options``) writes it with Apache Beam."""
    return trainer.prepare(as_config(config), overwrite=overwrite, runner=runner, pipeline_options=pipeline_options)


def datasets(config: Any, prepared: PreparedDataset | None = None) -> tuple:
    """The ``(train, valid, test)`` ``tf.data`` pipelines of a config (its objective, batch sizes, seed)."""
    config = as_config(config)
    return trainer.config_datasets(config, prepared or trainer.prepare(config))


def create_model(config: Any, prepared: PreparedDataset | None = None) -> keras.Model:
    """The compiled model of a config, ready to ``fit``: the backbone of ``model.name`` sized for the prepared
    dataset (its schema and item-feature tables), the task, the optimizer and the ranking metrics.

    The global random seed is set to ``training.seed`` first, so equal configs give equal initial weights.
    """
    config = as_config(config)
    prepared = prepared or trainer.prepare(config)
    keras.utils.set_random_seed(config.training.seed)
    return trainer.create_model(config, prepared)


def train(config: Any, **kwargs) -> trainer.TrainResult:
    """Trains a config into its run directory (see :func:`tfsidefuse.training.trainer.train`)."""
    return trainer.train(as_config(config), **kwargs)


def evaluate(config: Any, split: str = "test", *, with_baseline: bool = True) -> dict:
    """Metrics of a config's trained run on a split (see :func:`tfsidefuse.training.trainer.evaluate`)."""
    return trainer.evaluate(as_config(config), split, with_baseline=with_baseline)
