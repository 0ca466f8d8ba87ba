from pathlib import Path

import pytest
import yaml

from tfsidefuse.config import ConfigError, load_config

BASE = {
    "dataset": {"source": "demo", "prepared_dir": "runs/data/demo"},
    "model": {"name": "sasrec", "hidden_dim": 32},
    "training": {"run_dir": "runs/x", "learning_rate": "1e-3"},
}


def write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_(section, **kv):
    data = {k: dict(v) for k, v in BASE.items()}
    data[section].update(kv)
    return data


def test_valid_config_and_overrides(tmp_path):
    config = load_config(write(tmp_path, BASE), {"training.epochs": 3})
    assert config.training.learning_rate == pytest.approx(1e-3)  # YAML's "1e-3" string is accepted
    assert config.training.epochs == 3
    assert config.model.params == {"hidden_dim": 32}
    assert config.to_dict()["model"] == {"name": "sasrec", "hidden_dim": 32}


@pytest.mark.parametrize(
    "data, message",
    [
        (with_("training", epoch=3), r"training: unknown key\(s\) \['epoch'\]"),
        (with_("training", epochs="many"), r"training.epochs: expected .* got 'many'"),
        (with_("training", epochs=0), "training.epochs must be a positive integer, got 0"),
        (with_("training", monitor="auc"), "training.monitor must be one of .* got 'auc'"),
        (with_("training", objective="pairs"), "training.objective must be one of .* got 'pairs'"),
        (with_("training", learning_rate=-1.0), "training.learning_rate must be > 0, got -1.0"),
        (with_("model", name="gru4rec"), "model.name must be one of .* got 'gru4rec'"),
        (with_("model", hidden=64), r"model: unknown key\(s\) \['hidden'\]"),
        (with_("model", num_layers="two"), r"model.num_layers: expected int, got 'two'"),
        (with_("model", position_order="latest"), "model.position_order must be one of .* got 'latest'"),
        (
            with_("model", name="difsr", attribute_predictor_bias="mean"),
            "model.attribute_predictor_bias must be one of .* got 'mean'",
        ),
        (with_("dataset", source="xlsx"), "dataset.source must be one of .* got 'xlsx'"),
        (with_("dataset", source="csv"), "dataset.path is required for source 'csv'"),
        (with_("dataset", source="csv", path="/nonexistent/*.csv"), "dataset.path: no file matches '/nonexistent/"),
        (with_("dataset", columns={"user": "uid"}), "dataset.columns is only allowed with source 'csv' or 'parquet'"),
        (with_("dataset", source="s3rec"), "dataset.path is required for source 's3rec'"),
        (with_("dataset", source="s3rec", path="/no/such/dir"), "directory not found: '/no/such/dir'"),
        (with_("dataset", demo={"num_user": 3}), r"dataset.demo: unknown key\(s\) \['num_user'\]"),
        (with_("dataset", max_len=0), "dataset.max_len must be a positive integer, got 0"),
        ({"dataset": BASE["dataset"]}, "missing section 'training'"),
        ({**BASE, "optimizer": {}}, r"config: unknown key\(s\) \['optimizer'\]"),
        (with_("training", run_dir=None) | {"training": {}}, r"training: missing required key\(s\) \['run_dir'\]"),
        (with_("training", length_buckets=[5, 3]), r"training.length_buckets must be .* got \[5, 3\]"),
        (with_("training", length_buckets="some"), "training.length_buckets must be .* got 'some'"),
        (with_("training", length_buckets=[5, 500]), "length_buckets: bound 500 exceeds dataset.max_len"),
        (with_("training", jit_compile="yes"), r"training.jit_compile: expected bool, got 'yes'"),
        (with_("training", weight_decay=-0.1), r"training.weight_decay must be >= 0, got -0.1"),
        (with_("training", ema_momentum=1.0), r"training.ema_momentum must be a number in \(0, 1\) or null, got 1.0"),
        (with_("training", ema_momentum=0), r"training.ema_momentum must be a number in \(0, 1\) or null, got 0"),
        (with_("training", ema_momentum="slow"), r"training.ema_momentum: expected .* got 'slow'"),
        (with_("training", reduce_lr_factor=1.5), r"training.reduce_lr_factor must be in \(0, 1\) or null, got 1.5"),
        (with_("training", reduce_lr_factor="half"), r"training.reduce_lr_factor: expected .* got 'half'"),
        (with_("training", reduce_lr_patience=0), "training.reduce_lr_patience must be a positive integer, got 0"),
        (with_("training", min_learning_rate=0.01), r"training.min_learning_rate must be .* got 0.01"),
        (with_("training", lr_schedule="linear"), r"training.lr_schedule must be one of .* got 'linear'"),
        (
            with_("training", lr_schedule="cosine", reduce_lr_factor=0.5),
            r"training.lr_schedule='cosine' .* cannot be combined with training.reduce_lr_factor=0.5",
        ),
    ],
)
def test_mistakes_fail_early_naming_key_and_value(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, data))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


ROOT = Path(__file__).resolve().parents[1]


def load_project_config(path, monkeypatch):
    """A config of the project, loaded from the project root; skips when its real dataset is absent."""
    monkeypatch.chdir(ROOT)  # configs name paths relative to the project root
    with open(path) as fh:
        data = yaml.safe_load(fh)
    if data["dataset"]["source"] in ("s3rec", "recbole"):
        from helpers import shared_data

        shared_data(data["dataset"]["path"].rsplit("/", 1)[-1])
    return load_config(path)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("configs/*/*.yaml")))
def test_shipped_configs_are_valid(path, monkeypatch):
    config = load_project_config(path, monkeypatch)
    from tfsidefuse.models.registry import BACKBONES

    assert config.model.name in BACKBONES
    assert config.model.name == Path(path).stem


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("benchmarks/configs/*.yaml")))
def test_benchmark_configs_are_valid(path, monkeypatch):
    """The benchmarks' configs load as the shipped ones; each names its dataset and model in its file name."""
    config = load_project_config(path, monkeypatch)
    dataset = Path(config.dataset.path).name
    assert Path(path).stem.startswith(f"{dataset}-{config.model.name}"), path
    shipped = load_config(f"configs/{dataset}/{config.model.name}.yaml")
    assert config.training.run_dir != shipped.training.run_dir  # a benchmark run keeps the shipped run's files
