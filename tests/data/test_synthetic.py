"""Tests of the large-catalogue generator: determinism, sizes, the power law, attribute-driven transitions, prepare."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tensorflow as tf

from tfsidefuse.cli import main
from tfsidefuse.config import RunConfig
from tfsidefuse.data.pipeline import parse_sequence_examples
from tfsidefuse.data.prepared import ITEM_ID, USER_ID
from tfsidefuse.data.synthetic import MIN_LENGTH, make_synthetic_log, write_synthetic_dataset
from tfsidefuse.errors import ConfigError
from tfsidefuse.training import trainer


def _pairs(log) -> tuple[np.ndarray, np.ndarray]:
    """(previous item, next item) of every pair of consecutive events of one user (0-based item indices)."""
    starts = np.concatenate([[0], np.cumsum(log.lengths)[:-1]])
    follows = np.ones(log.num_events, dtype=bool)
    follows[starts] = False
    index = np.flatnonzero(follows)
    return log.items[index - 1] - 1, log.items[index] - 1


def test_same_seed_same_log_and_files(tmp_path) -> None:
    args = {"num_users": 500, "num_items": 300, "num_categories": 7, "num_brands": 20, "seed": 5}
    a, b = make_synthetic_log(**args), make_synthetic_log(**args)
    for field in ("lengths", "items", "item_category", "item_brand", "item_rank"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    a.write_recbole(tmp_path / "a" / "log")
    b.write_recbole(tmp_path / "b" / "log")
    for name in ("log.inter", "log.item", "synthetic.json"):
        assert (tmp_path / "a" / "log" / name).read_bytes() == (tmp_path / "b" / "log" / name).read_bytes()
    c = make_synthetic_log(**{**args, "seed": 6})
    assert not np.array_equal(a.items[:100], c.items[:100])


def test_sizes_catalogue_and_files(tmp_path) -> None:
    log = write_synthetic_dataset(
        tmp_path, num_users=20_000, num_items=2_000, num_categories=13, num_brands=40, mean_length=8.0, seed=1
    )
    assert log.num_users == 20_000 and log.num_items == 2_000
    assert log.lengths.min() >= MIN_LENGTH and log.num_events == int(log.lengths.sum())
    assert abs(log.lengths.mean() - 8.0) < 0.2
    assert log.items.min() >= 1 and log.items.max() <= 2_000
    # Every category has items; brand b sells in category b mod 13 only; ranks are a permutation.
    assert set(np.unique(log.item_category)) == set(range(13))
    np.testing.assert_array_equal(log.item_brand % 13, log.item_category)
    np.testing.assert_array_equal(np.sort(log.item_rank), np.arange(1, 2_001))

    lines = (tmp_path / f"{tmp_path.name}.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token" and len(lines) == 1 + log.num_events
    first = [line.split("\t") for line in lines[1 : 1 + log.lengths[0]]]
    assert first == [["1", str(i)] for i in log.items[: log.lengths[0]]]
    assert lines[-1] == f"20000\t{log.items[-1]}" and lines[1 + log.lengths[0]].startswith("2\t")
    items = (tmp_path / f"{tmp_path.name}.item").read_text().splitlines()
    assert items[0] == "item_id:token\tcategory:token\tbrand:token" and len(items) == 2_001
    assert items[1] == f"1\tc{log.item_category[0]}\tb{log.item_brand[0]}"
    assert items[-1] == f"2000\tc{log.item_category[-1]}\tb{log.item_brand[-1]}"
    info = json.loads((tmp_path / "synthetic.json").read_text())
    assert info["events"] == log.num_events and info["attribute_vocabulary"] == 53
    assert info["arguments"]["seed"] == 1


def test_generation_is_vectorised() -> None:
    start = time.perf_counter()
    log = make_synthetic_log(num_users=100_000, num_items=100_000, num_categories=300, num_brands=3_000)
    assert time.perf_counter() - start < 10.0
    assert log.num_events > 900_000


@pytest.mark.parametrize("exponent", [0.0, 0.8, 1.2])
def test_popularity_follows_the_power_law(exponent: float) -> None:
    log = make_synthetic_log(num_users=30_000, num_items=2_000, num_categories=20, num_brands=100, exponent=exponent)
    counts = np.bincount(log.items - 1, minlength=log.num_items)
    by_rank = counts[np.argsort(log.item_rank)]
    # Every event is item i with probability rank_i^-exponent / sum: the top 1% and 10% take that share.
    weights = np.arange(1, 2_001, dtype=np.float64) ** -exponent
    for top in (20, 200):
        expected = weights[:top].sum() / weights.sum()
        assert by_rank[:top].sum() / log.num_events == pytest.approx(expected, abs=0.015)
    np.testing.assert_allclose(log.item_probabilities()[np.argsort(log.item_rank)], weights / weights.sum())
    if exponent > 0:
        slope = np.polyfit(np.log(np.arange(1, 101)), np.log(by_rank[:100]), 1)[0]
        assert slope == pytest.approx(-exponent, abs=0.1)


def test_attributes_shape_the_transitions() -> None:
    log = make_synthetic_log(num_users=20_000, num_items=3_000, num_categories=30, num_brands=150, seed=2)
    previous, following = _pairs(log)
    category, brand = log.item_category, log.item_brand
    same_category = np.mean(category[previous] == category[following])
    share = np.bincount(category[log.items - 1], minlength=30) / log.num_events
    # Staying is at least `stay` (0.5), far above two independent events sharing a category.
    assert same_category > 0.5 > 5 * np.sum(share**2)
    # A category move goes to a ring neighbour, at most two places away.
    offset = (category[following] - category[previous]) % 30
    assert set(np.unique(offset)) <= {0, 1, 2, 28, 29}
    moved = offset != 0
    assert moved.mean() > 0.1
    # Within a category, the brand is kept far more often than the brands' weights alone would give.
    stayed = ~moved
    kept = np.mean(brand[previous][stayed] == brand[following][stayed])
    probabilities = log.item_probabilities()
    brand_weight = np.bincount(brand, weights=probabilities, minlength=150)
    category_weight = np.bincount(category, weights=probabilities, minlength=30)
    chance = np.sum(brand_weight**2 / category_weight[np.arange(150) % 30]) / np.sum(category_weight)
    assert kept > 0.5 + 0.5 * chance - 0.02 and kept > chance + 0.2


def test_extreme_settings_are_exact() -> None:
    always = make_synthetic_log(num_users=500, num_items=400, num_categories=10, num_brands=30, stay=1.0, loyalty=1.0)
    previous, following = _pairs(always)
    np.testing.assert_array_equal(always.item_brand[previous], always.item_brand[following])
    never = make_synthetic_log(num_users=500, num_items=400, num_categories=10, num_brands=30, stay=1.0, loyalty=0.0)
    previous, following = _pairs(never)
    np.testing.assert_array_equal(never.item_category[previous], never.item_category[following])
    assert np.mean(never.item_brand[previous] != never.item_brand[following]) > 0.2


def test_prepare_reads_the_written_log(tmp_path) -> None:
    log = write_synthetic_dataset(
        tmp_path / "raw", num_users=400, num_items=150, num_categories=5, num_brands=12, exponent=0.5, seed=3
    )
    config = RunConfig.from_dict(
        {
            "dataset": {
                "source": "recbole",
                "path": str(tmp_path / "raw"),
                "prepared_dir": str(tmp_path / "prepared"),
                "max_len": 20,
                "num_shards": 1,
            },
            "model": {"name": "difsr", "features": ["category", "brand"]},
            "training": {"run_dir": str(tmp_path / "run")},
        }
    )
    prepared = trainer.prepare(config)
    assert prepared.stats["users"] == 400
    assert prepared.stats["interactions"] == log.num_events
    assert prepared.stats["items"] == len(np.unique(log.items)) == prepared.schema.num_items - 2
    assert prepared.stats["train_targets"] == int((log.lengths - 3).sum())
    assert [f.name for f in prepared.schema.features] == ["category", "brand"]
    assert prepared.schema.feature("category").vocab_size == 5 + 2
    # Each user's sequence, in order, and each item's category and brand in the model's item table.
    items = prepared.vocabulary(ITEM_ID)
    record = next(iter(tf.data.TFRecordDataset(prepared.files("test")).take(1)))
    parsed = parse_sequence_examples(record, prepared.schema)
    user = int(prepared.vocabulary("user_id")[int(parsed[USER_ID])])
    start = int(log.lengths[: user - 1].sum())
    assert [int(items[i]) for i in parsed[ITEM_ID].numpy()] == log.items[start : start + log.lengths[user - 1]].tolist()
    for name, values, prefix in (("category", log.item_category, "c"), ("brand", log.item_brand, "b")):
        vocabulary, table = prepared.vocabulary(name), prepared.item_feature_tables[name]
        for row in (2, 3, len(items) - 1):
            assert vocabulary[int(table[row].ravel()[0])] == f"{prefix}{values[int(items[row]) - 1]}"


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_users": 0}, "num_users must be an int >= 1, got num_users=0"),
        ({"num_items": 2.5}, "num_items must be an int >= 1, got num_items=2.5"),
        ({"num_items": 10, "num_categories": 11, "num_brands": 20}, "num_categories must not exceed num_items=10"),
        ({"num_categories": 10, "num_brands": 9}, "num_brands must be at least num_categories=10.*num_brands=9"),
        ({"mean_length": 2.0}, r"mean_length must be in \[3, 1e6\], got mean_length=2.0"),
        ({"exponent": -1}, r"exponent must be in \[0, 10\], got exponent=-1"),
        ({"exponent": float("nan")}, "exponent=nan"),
        ({"stay": 1.5}, r"stay must be in \[0, 1\], got stay=1.5"),
        ({"loyalty": "high"}, "loyalty must be a number in \\[0, 1\\], got loyalty='high'"),
        ({"seed": -1}, "seed must be an int >= 0, got seed=-1"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(arguments: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_synthetic_log(**arguments)


def test_command_line(tmp_path, capsys) -> None:
    out = tmp_path / "log"
    argv = ["synthetic", "--out", str(out), "--users", "50", "--items", "40", "--categories", "4", "--brands", "8"]
    assert main([*argv, "--seed", "2"]) == 0
    assert "wrote 50 users" in capsys.readouterr().out
    expected = make_synthetic_log(num_users=50, num_items=40, num_categories=4, num_brands=8, seed=2)
    lines = (out / "log.inter").read_text().splitlines()[1:]
    assert [int(line.split("\t")[1]) for line in lines] == expected.items.tolist()
    assert main([*argv, "--exponent", "-2"]) == 2
    assert "exponent must be in [0, 10], got exponent=-2.0" in capsys.readouterr().err
