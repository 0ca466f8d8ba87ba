"""The Beam preprocessing writes the same prepared dataset as the pandas path.

Every comparison decodes both directories (vocabularies, schema, item-feature tables, stats, every record of
every shard in file order) and asserts exact equality, then also checks that the fingerprints (SHA-256 over
every data file) are equal. Pipelines run on the DirectRunner with two worker processes.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml
from helpers import shared_data

beam = pytest.importorskip("apache_beam")

import tfsidefuse  # noqa: E402
from tfsidefuse.cli import main as cli_main  # noqa: E402
from tfsidefuse.config import DatasetConfig  # noqa: E402
from tfsidefuse.data.beam_prepare import quantiles_from_histogram, run_beam_prepare  # noqa: E402
from tfsidefuse.data.ingest import SPLITS, encode  # noqa: E402
from tfsidefuse.data.prepared import PreparedDataset, write_prepared  # noqa: E402
from tfsidefuse.data.raw_dataset import RawDataset  # noqa: E402
from tfsidefuse.data.schema import FeatureSpec  # noqa: E402
from tfsidefuse.errors import DataError  # noqa: E402

MULTI_PROCESS = {"direct_running_mode": "multi_processing", "direct_num_workers": 2}
BEAM_FLAGS = ["--beam-option", "direct_running_mode=multi_processing", "--beam-option", "direct_num_workers=2"]


def _decode(directory) -> dict:
    """Everything a prepared directory holds, decoded."""
    prepared = PreparedDataset.open(directory, verify=True)
    out = {
        "schema": yaml.safe_load(open(os.path.join(directory, "schema.yaml"))),
        "stats": json.load(open(os.path.join(directory, "stats.json"))),
        "tables": {name: table.tolist() for name, table in prepared.item_feature_tables.items()},
        "vocab": {
            name[: -len(".txt")]: prepared.vocabulary(name[: -len(".txt")])
            for name in sorted(os.listdir(os.path.join(directory, "vocab")))
        },
        "records": {},
    }
    for split in SPLITS:
        records = []
        for path in prepared.files(split):
            for data in tf.data.TFRecordDataset(path).as_numpy_iterator():
                example = tf.train.SequenceExample.FromString(data)
                lists = {
                    name: [f.int64_list.value[0] for f in fl.feature]
                    for name, fl in sorted(example.feature_lists.feature_list.items())
                }
                records.append((os.path.basename(path), example.context.feature["user_id"].int64_list.value[0], lists))
        out["records"][split] = records
    return out


def assert_same_prepared(expected_dir, actual_dir) -> None:
    """Exact equality of two prepared directories, decoded, and of their fingerprints."""
    expected, actual = _decode(expected_dir), _decode(actual_dir)
    assert actual["vocab"] == expected["vocab"]
    assert actual["schema"] == expected["schema"]
    assert actual["tables"] == expected["tables"]
    assert actual["stats"] == expected["stats"]
    for split in SPLITS:
        assert len(actual["records"][split]) == len(expected["records"][split]) == expected["stats"]["users"]
        assert actual["records"][split] == expected["records"][split], split
    assert PreparedDataset.open(actual_dir).fingerprint == PreparedDataset.open(expected_dir).fingerprint


def test_quantiles_from_histogram_equal_numpy_quantile():
    rng = np.random.default_rng(0)
    levels = np.linspace(0.0, 1.0, 11)[1:-1]
    samples = [
        rng.integers(0, 50, 1000).astype(float),
        rng.normal(size=777),
        np.round(rng.exponential(3.0, 5000), 1),
        np.array([4.0]),
        np.array([1.0, 2.0]),
    ]
    for sample in samples:
        values, counts = np.unique(sample, return_counts=True)
        got = quantiles_from_histogram(values[::-1], counts[::-1], levels)
        np.testing.assert_array_equal(got, np.quantile(sample, levels))


def _synthetic_raw(seed: int = 1) -> RawDataset:
    """Users and items with ties in time, missing values, quantile and fixed buckets, three item features."""
    rng = np.random.default_rng(seed)
    n = 3000
    users = rng.integers(0, 150, n)
    items = (rng.zipf(1.6, n) % 90).astype(int)
    dwell = np.round(rng.exponential(20.0, n), 1)
    dwell[rng.random(n) < 0.05] = np.nan
    action = rng.choice(["view", "cart", "buy"], n).astype(object)
    action[rng.random(n) < 0.05] = None
    interactions = pd.DataFrame(
        {
            "user": [f"u{u}" for u in users],
            "item": [f"i{i}" for i in items],
            "time": rng.integers(0, 400, n) * 60,  # many same-time events per user
            "action": action,
            "dwell": dwell,
        }
    )
    item_ids = [f"i{i}" for i in range(95)]
    items_df = pd.DataFrame(
        {
            "item": item_ids,
            "brand": [None if i % 7 == 0 else f"b{i % 5}" for i in range(95)],
            "tags": [[f"t{(i * j) % 11}" for j in range(i % 4)] for i in range(95)],
            "price": [float(i % 13) * 2.5 for i in range(95)],
        }
    )
    features = [
        FeatureSpec("brand", "item", "categorical"),
        FeatureSpec("action", "interaction", "categorical"),
        FeatureSpec("tags", "item", "multi_categorical", max_values=2),
        FeatureSpec("dwell", "interaction", "bucketized", num_buckets=5),
        FeatureSpec("price", "item", "bucketized", num_buckets=4),
        FeatureSpec("gap", "interaction", "bucketized", transform="time_gap", num_buckets=6),
    ]
    return RawDataset("synthetic", interactions, items_df, features)


# Without k-core: a subset of the 15-core case's steps, in the slow run.
@pytest.mark.parametrize("k_core", [pytest.param(None, marks=pytest.mark.slow), 15])
def test_beam_equals_pandas_with_k_core_ties_missing_values_and_quantile_buckets(tmp_path, k_core):
    raw = _synthetic_raw()
    cfg = DatasetConfig(source="demo", prepared_dir=str(tmp_path / "beam"), k_core=k_core, num_shards=3, max_len=20)
    write_prepared(encode(raw, max_len=20, k_core=k_core), tmp_path / "pandas", num_shards=3)
    run_beam_prepare(cfg, str(tmp_path / "beam"), raw=raw, options=MULTI_PROCESS)
    assert_same_prepared(tmp_path / "pandas", tmp_path / "beam")
    stats = json.load(open(tmp_path / "beam" / "stats.json"))
    if k_core:  # the pandas loop needs 4 rounds here, the Beam passes two (3 rounds each)
        assert (stats["raw_interactions"], stats["interactions"], stats["users"]) == (3000, 2167, 112)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary directory left


def test_cli_prepare_with_direct_runner_equals_pandas_on_demo_data(tmp_path, capsys):
    demo = "{num_users: 400, num_items: 120}"
    common = ["--config", "demo/sasrec", "--set", f"dataset.demo={demo}", "--set", "dataset.k_core=3"]
    config = tfsidefuse.load_config(
        "demo/sasrec",
        {"dataset.prepared_dir": str(tmp_path / "pandas"), "dataset.demo": yaml.safe_load(demo), "dataset.k_core": 3},
    )
    tfsidefuse.prepare(config)
    argv = ["prepare", *common, "--set", f"dataset.prepared_dir={tmp_path / 'beam'}", "--runner", "DirectRunner"]
    assert cli_main([*argv, *BEAM_FLAGS]) == 0
    assert_same_prepared(tmp_path / "pandas", tmp_path / "beam")
    assert cli_main(["verify", str(tmp_path / "beam")]) == 0
    # Up to date: the next prepare (either path) reuses it; the manifest records the same dataset section.
    assert cli_main([*argv, "--beam-option", "direct_num_workers=2"]) == 0
    manifests = [json.load(open(tmp_path / d / "manifest.json")) for d in ("pandas", "beam")]
    assert manifests[0]["dataset_config"]["demo"] == manifests[1]["dataset_config"]["demo"]
    capsys.readouterr()
    assert cli_main(["prepare", *common, "--beam-option", "direct_num_workers=2"]) == 2
    assert "need --runner" in capsys.readouterr().err


def _write_partitions(raw: RawDataset, directory, fmt: str) -> str:
    """The log of ``raw`` as three partitions with renamed columns; returns the glob."""
    frame = raw.interactions.rename(columns={"user": "uid", "item": "iid", "time": "ts"})
    frame["action"] = frame["action"].astype(object)
    os.makedirs(directory)
    bounds = [0, len(frame) // 3, 2 * len(frame) // 3, len(frame)]
    for part, (a, b) in enumerate(zip(bounds, bounds[1:])):
        chunk = frame.iloc[a:b]
        if fmt == "csv":
            chunk.to_csv(os.path.join(directory, f"part-{part}.csv"), index=False)
        else:
            chunk.to_parquet(os.path.join(directory, f"part-{part}.parquet"), index=False)
    return os.path.join(str(directory), f"part-*.{fmt}")


# CSV shares the reader path after its file decoder (its errors are checked below): in the slow run.
@pytest.mark.parametrize("fmt", [pytest.param("csv", marks=pytest.mark.slow), "parquet"])
def test_partitioned_logs_beam_equals_pandas(tmp_path, fmt):
    raw = _synthetic_raw(seed=2)
    raw.interactions = raw.interactions.drop(columns="dwell")
    pattern = _write_partitions(raw, tmp_path / "logs", fmt)
    overrides = {
        "dataset.source": fmt,
        "dataset.path": pattern,
        "dataset.name": "shop",
        "dataset.columns": {"user": "uid", "item": "iid", "time": "ts"},
        "dataset.k_core": 2,
        "dataset.num_shards": 2,
    }
    pandas_cfg = tfsidefuse.load_config("demo/sasrec", {**overrides, "dataset.prepared_dir": str(tmp_path / "p")})
    beam_cfg = tfsidefuse.load_config("demo/sasrec", {**overrides, "dataset.prepared_dir": str(tmp_path / "b")})
    tfsidefuse.prepare(pandas_cfg)
    prepared = tfsidefuse.prepare(beam_cfg, runner="DirectRunner", pipeline_options=MULTI_PROCESS)
    assert_same_prepared(tmp_path / "p", tmp_path / "b")
    assert [f.name for f in prepared.schema.features] == ["action", "time_gap"]
    assert sorted(prepared.manifest["raw_inputs"]) == [f"part-{i}.{fmt}" for i in range(3)]


def test_malformed_csv_partition_is_named_in_the_error(tmp_path):
    raw = _synthetic_raw(seed=3)
    pattern = _write_partitions(raw.__class__("x", raw.interactions.drop(columns="dwell")), tmp_path / "logs", "csv")
    bad = tmp_path / "logs" / "part-1.csv"
    lines = bad.read_text().splitlines()
    lines[5] += ",extra,fields"
    bad.write_text("\n".join(lines) + "\n")
    cfg = {
        "dataset.source": "csv",
        "dataset.path": pattern,
        "dataset.columns": {"user": "uid", "item": "iid", "time": "ts"},
    }
    for runner in (None, "DirectRunner"):
        config = tfsidefuse.load_config("demo/sasrec", {**cfg, "dataset.prepared_dir": str(tmp_path / str(runner))})
        with pytest.raises(DataError, match=r"part-1\.csv: malformed CSV partition: .*line 6,"):
            tfsidefuse.prepare(config, runner=runner)
    lines[5] = lines[5].split(",extra")[0].replace(lines[5].split(",")[2], "noon")  # a time that is no number
    bad.write_text("\n".join(lines) + "\n")
    for runner in (None, "DirectRunner"):
        config = tfsidefuse.load_config("demo/sasrec", {**cfg, "dataset.prepared_dir": str(tmp_path / str(runner))})
        with pytest.raises(DataError, match=r"part-1\.csv:6: time 'noon' \('ts' column\) is not a number"):
            tfsidefuse.prepare(config, runner=runner)
    assert not (tmp_path / "DirectRunner").exists()


def test_unknown_runner_is_a_config_error(tmp_path):
    config = tfsidefuse.load_config("demo/sasrec", {"dataset.prepared_dir": str(tmp_path / "d")})
    with pytest.raises(tfsidefuse.ConfigError, match="runner 'NoSuchRunner': .*NoSuchRunner"):
        tfsidefuse.prepare(config, runner="NoSuchRunner")
    assert not (tmp_path / "d").exists()


def _prepare_real(tmp_path, preset: str, path) -> None:
    overrides = {"dataset.path": str(path)}
    pandas_cfg = tfsidefuse.load_config(preset, {**overrides, "dataset.prepared_dir": str(tmp_path / "p")})
    beam_cfg = tfsidefuse.load_config(preset, {**overrides, "dataset.prepared_dir": str(tmp_path / "b")})
    tfsidefuse.prepare(pandas_cfg)
    tfsidefuse.prepare(beam_cfg, runner="DirectRunner", pipeline_options=MULTI_PROCESS)
    assert_same_prepared(tmp_path / "p", tmp_path / "b")


def test_real_ml100k_beam_equals_pandas(tmp_path):
    _prepare_real(tmp_path, "ml-100k/sasrec", shared_data("ml-100k"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["amazon-beauty", "amazon-sports"])
def test_real_amazon_beam_equals_pandas(tmp_path, name):
    _prepare_real(tmp_path, f"{name}/sasrec", shared_data(name))
