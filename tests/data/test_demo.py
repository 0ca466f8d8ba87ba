"""Tests of the synthetic demo dataset: determinism, shape and the structure that side features expose."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from tfsidefuse.data import FeatureSpec, RawDataset, make_demo_dataset


@pytest.fixture(scope="module")
def demo() -> RawDataset:
    return make_demo_dataset()


@pytest.fixture(scope="module")
def transitions(demo: RawDataset) -> pd.DataFrame:
    """One row per consecutive pair of events of a user: current item/category/brand/action and the next ones."""
    frame = demo.interactions.merge(demo.items, on="item", how="left", validate="many_to_one")
    grouped = frame.groupby("user", sort=False)
    for col in ("item", "category", "brand"):
        frame["next_" + col] = grouped[col].shift(-1)
    return frame.dropna(subset=["next_item"])


def test_demo_is_fast_and_deterministic() -> None:
    start = time.perf_counter()
    a = make_demo_dataset(seed=3)
    assert time.perf_counter() - start < 2.0
    b = make_demo_dataset(seed=3)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    c = make_demo_dataset(seed=4)
    assert not a.interactions["item"].equals(c.interactions["item"])


def test_demo_shape_and_schema(demo: RawDataset) -> None:
    inter, items = demo.interactions, demo.items
    assert demo.name == "demo"
    assert list(inter.columns) == ["user", "item", "time", "action"]
    assert list(items.columns) == ["item", "category", "brand"]
    assert demo.features == [
        FeatureSpec("category", "item", "categorical"),
        FeatureSpec("brand", "item", "categorical"),
        FeatureSpec("action", "interaction", "categorical"),
    ]
    assert inter["user"].nunique() == 3000
    assert len(items) == 600 and items["item"].is_unique
    assert set(inter["item"]) <= set(items["item"])
    assert items["category"].nunique() == 12
    assert items["brand"].nunique() <= 40
    assert items.notna().all().all()
    assert set(inter["action"]) == {"view", "cart", "buy"}
    for col in ("user", "item", "action"):
        assert all(isinstance(v, str) for v in inter[col].head(100))

    lengths = inter.groupby("user", sort=False).size()
    assert lengths.min() >= 5 and lengths.max() <= 30
    assert 10.0 <= lengths.mean() <= 14.0
    # Users are contiguous blocks, in chronological order.
    assert int((inter["user"] != inter["user"].shift()).sum()) == 3000
    assert inter["time"].dtype == np.int64
    assert (inter.groupby("user", sort=False)["time"].diff().dropna() > 0).all()


def test_demo_small_sizes() -> None:
    raw = make_demo_dataset(num_users=5, num_items=3, num_categories=3, num_brands=1, seed=1)
    assert raw.interactions["user"].nunique() == 5
    assert len(raw.items) == 3
    assert raw.items["category"].nunique() == 3
    with pytest.raises(ValueError, match="num_categories"):
        make_demo_dataset(num_items=3, num_categories=4)
    with pytest.raises(ValueError, match="num_users"):
        make_demo_dataset(num_users=0)


def test_demo_category_persists_and_brand_is_loyal(demo: RawDataset, transitions: pd.DataFrame) -> None:
    same_category = (transitions["category"] == transitions["next_category"]).mean()
    assert same_category > 3.0 / 12
    same_brand = (transitions["brand"] == transitions["next_brand"]).mean()
    assert same_brand > 5.0 / 40
    # Immediate repeats are rare, so repeating the last item is no shortcut.
    assert (transitions["item"] == transitions["next_item"]).mean() < 0.15


def test_demo_action_changes_the_transition(transitions: pd.DataFrame) -> None:
    stay = transitions.assign(stay=transitions["category"] == transitions["next_category"]).groupby("action")["stay"]
    rates = stay.mean()
    assert rates["view"] > 0.7
    assert rates["buy"] < 0.2
    # The next-category distribution given the current category differs between "view" and "buy".
    counts = transitions.groupby(["action", "category"])["next_category"].value_counts(normalize=True)
    tv = []
    for category in transitions["category"].unique():
        view = counts.loc[("view", category)]
        buy = counts.loc[("buy", category)]
        both = view.index.union(buy.index)
        tv.append(0.5 * (view.reindex(both, fill_value=0) - buy.reindex(both, fill_value=0)).abs().sum())
    assert np.mean(tv) > 0.5


def test_demo_popularity_is_skewed(demo: RawDataset, transitions: pd.DataFrame) -> None:
    counts = demo.interactions["item"].value_counts()
    # Many rare items, a few very popular ones.
    assert (counts <= 20).sum() >= 0.2 * len(demo.items)
    assert counts.iloc[: len(counts) // 10].sum() > 0.3 * counts.sum()
    # The category of the current item predicts the next item's category much better than chance,
    # even when the current item is rare.
    rare = set(counts[counts <= 20].index)
    rare_rows = transitions[transitions["item"].isin(rare)]
    assert len(rare_rows) > 500
    assert (rare_rows["category"] == rare_rows["next_category"]).mean() > 3.0 / 12
