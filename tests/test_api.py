"""The one-import entry points: presets, a config to datasets and a ready-to-fit model, build_model from a
prepared dataset."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

import tfsidefuse
from tfsidefuse.cli import main
from tfsidefuse.presets import PRESETS_DIR

TINY = {
    "dataset.prepared_dir": "data",
    "dataset.num_shards": 1,
    "dataset.demo": {"num_users": 300, "num_items": 80, "seed": 0},
    "dataset.max_len": 12,
    "model.hidden_dim": 16,
    "model.num_layers": 1,
    "model.num_heads": 1,
    "model.ff_dim": 32,
    "training.run_dir": "run",
    "training.batch_size": 64,
    "training.epochs": 1,
    "training.verbose": 0,
}


def test_every_shipped_config_is_a_preset_inside_the_package():
    names = tfsidefuse.preset_names()
    assert "demo/sasrec" in names and "amazon-beauty/difsr" in names and len(names) == 40
    for name in names:
        assert os.path.isfile(os.path.join(PRESETS_DIR, *name.split("/")) + ".yaml")
    assert os.path.realpath("configs") == os.path.realpath(PRESETS_DIR) or not os.path.exists("configs")


def test_quickstart_from_a_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tfsidefuse.load_config("demo/sasrec_f", TINY)
    assert config.model.name == "sasrec_f"
    prepared = tfsidefuse.prepare(config)
    train_ds, valid_ds, test_ds = tfsidefuse.datasets(config, prepared)
    model = tfsidefuse.create_model(config, prepared)
    model.fit(train_ds, validation_data=valid_ds, epochs=1, verbose=0)
    metrics = model.evaluate(test_ds, return_dict=True, verbose=0)
    assert 0.0 < metrics["ndcg@20"] <= metrics["hr@20"] <= 1.0
    # The test pipeline is the evaluation protocol's: one example per user, the same numbers as evaluate_model.
    from tfsidefuse.evaluation import evaluate_model

    assert evaluate_model(model, prepared, "test")["ndcg@20"] == pytest.approx(metrics["ndcg@20"], abs=1e-6)
    assert sum(int(y.shape[0]) for _, y in test_ds) == prepared.split_records("test")


def test_create_model_is_seeded_by_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = tfsidefuse.create_model(tfsidefuse.load_config("demo/sasrec", TINY))
    second = tfsidefuse.create_model(tfsidefuse.load_config("demo/sasrec", TINY))
    other = tfsidefuse.create_model(tfsidefuse.load_config("demo/sasrec", {**TINY, "training.seed": 7}))
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(c)) for a, c in zip(first.weights, other.weights))


def test_build_model_takes_the_prepared_dataset(tmp_path, monkeypatch):
    import keras

    monkeypatch.chdir(tmp_path)
    config = tfsidefuse.load_config("demo/sasrec", TINY)
    prepared = tfsidefuse.prepare(config)
    params = {"features": ["category"], "hidden_dim": 8}
    keras.utils.set_random_seed(1)
    model = tfsidefuse.build_model("sasrec_f", params, prepared=prepared)
    keras.utils.set_random_seed(1)
    explicit = tfsidefuse.build_model(
        "sasrec_f", params, schema=prepared.schema, item_feature_tables=prepared.item_feature_tables
    )
    keras.utils.set_random_seed(1)
    no_tables = tfsidefuse.build_model("sasrec_f", params, schema=prepared.schema)  # all-padding item tables
    x, y = next(iter(tfsidefuse.datasets(config, prepared)[1]))
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(explicit(x)), atol=1e-6)
    assert not np.allclose(np.asarray(model(x)), np.asarray(no_tables(x)), atol=1e-6)  # the tables were taken
    model.compile()
    assert np.isfinite(float(model.test_on_batch(x, y, return_dict=True)["loss"]))


def test_as_config_accepts_dicts_and_refuses_other_things():
    with open(os.path.join(PRESETS_DIR, "demo", "sasrec.yaml")) as fh:
        data = yaml.safe_load(fh)
    config = tfsidefuse.as_config(data, {"training.epochs": 2})
    assert config.training.epochs == 2 and tfsidefuse.as_config(config) is config
    with pytest.raises(tfsidefuse.ConfigError, match="got int"):
        tfsidefuse.as_config(3)
    with pytest.raises(tfsidefuse.ConfigError, match="nor a preset name"):
        tfsidefuse.load_config("demo/nope")


def test_cli_lists_copies_and_runs_presets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["presets"]) == 0
    assert "demo/sasrec\n" in capsys.readouterr().out
    assert main(["presets", "--copy", "demo/sasrec", "mine.yaml"]) == 0
    with open("mine.yaml") as fh, open(os.path.join(PRESETS_DIR, "demo", "sasrec.yaml")) as original:
        assert fh.read() == original.read()
    capsys.readouterr()
    assert main(["presets", "--copy", "demo/sasrec", "mine.yaml"]) == 2  # never over an existing file
    assert "mine.yaml exists" in capsys.readouterr().err
    sets = [
        a
        for key, value in TINY.items()
        for a in ("--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    ]
    assert main(["train", "--config", "demo/sasrec", *sets]) == 0
    assert os.path.isfile("run/model.keras")
