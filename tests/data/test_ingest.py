import numpy as np
import pandas as pd
import pytest

from tfsidefuse.data.ingest import encode, k_core_filter, split_end
from tfsidefuse.data.raw_dataset import RawDataset
from tfsidefuse.data.schema import FeatureSpec, SchemaError


def test_encode_tiny_dataset_by_hand(tiny_raw):
    enc = encode(tiny_raw, max_len=3)
    # Vocabularies: reserved tokens first; items in order of first (chronological) appearance.
    assert enc.vocabularies["item_id"] == ["[PAD]", "[OOV]", "y", "z", "x", "w"]
    assert enc.vocabularies["user_id"] == ["[PAD]", "[OOV]", "a", "b"]
    # Features: by frequency, ties by token. Ratings of a and b: 4 3 5 2 | 1 1 2.
    assert enc.vocabularies["rating"] == ["[PAD]", "[OOV]", "1", "2", "3", "4", "5"]
    assert enc.vocabularies["cat"] == ["[PAD]", "[OOV]", "c1", "c2", "c3"]
    # User c has 2 events: dropped. a sorted by time: y z x x; b: y z (tie keeps file order) w.
    np.testing.assert_array_equal(enc.offsets, [0, 4, 7])
    np.testing.assert_array_equal(enc.user_ids, [2, 3])
    np.testing.assert_array_equal(enc.item_ids, [2, 3, 4, 4, 2, 3, 5])
    np.testing.assert_array_equal(enc.interaction_features["rating"], [5, 4, 6, 3, 2, 2, 3])
    # Gaps: a: -, 1, 1, 1; b: -, 0, 1 -> OOV for the first event, then 2 + #(boundaries <= gap).
    np.testing.assert_array_equal(enc.interaction_features["gap"], [1, 3, 3, 3, 1, 2, 3])
    # Item table: y=[c2], z=[] (unknown), x=[c1, c2], w=[c3, c1] (max_values=2 keeps the first two).
    np.testing.assert_array_equal(enc.item_feature_tables["cat"], [[0, 0], [0, 0], [3, 0], [1, 0], [2, 3], [4, 2]])
    assert enc.schema.num_items == 6 and enc.schema.num_users == 4 and enc.schema.max_len == 3
    assert enc.schema.feature("cat").vocab_size == 5
    assert enc.schema.feature("rating").vocab_size == 7
    assert enc.schema.feature("gap").vocab_size == 5
    assert enc.stats["dropped_short_users"] == 1
    assert enc.stats["interactions"] == 7


def test_leave_one_out_split_lengths():
    lengths = np.array([3, 5, 10])
    np.testing.assert_array_equal(split_end(lengths, "test"), [3, 5, 10])
    np.testing.assert_array_equal(split_end(lengths, "valid"), [2, 4, 9])
    np.testing.assert_array_equal(split_end(lengths, "train"), [1, 3, 8])
    with pytest.raises(ValueError, match="'dev'"):
        split_end(lengths, "dev")


def test_time_sort_is_stable_and_file_order_is_used_without_time():
    inter = pd.DataFrame({"user": ["u"] * 4, "item": ["a", "b", "c", "d"], "time": [2, 1, 1, 0]})
    enc = encode(RawDataset("t", inter))
    tokens = [enc.vocabularies["item_id"][i] for i in enc.item_ids]
    assert tokens == ["d", "b", "c", "a"]
    enc = encode(RawDataset("t", inter.drop(columns="time")))
    assert [enc.vocabularies["item_id"][i] for i in enc.item_ids] == ["a", "b", "c", "d"]


def test_k_core_is_iterative():
    # Pass 1 removes item z (2 < 3); then user v is left with 1 event; without v, item y has 2: the stable
    # 3-core is users u1..u3 with item x only.
    rows = [("u1", "x")] * 3 + [("u1", "y")] + [("u2", "x")] * 3 + [("u2", "y")] + [("u3", "x")] * 3
    rows += [("v", "z"), ("v", "z"), ("v", "y")]
    df = pd.DataFrame(rows, columns=["user", "item"])
    core = k_core_filter(df, 3)
    assert set(core["item"]) == {"x"}
    assert set(core["user"]) == {"u1", "u2", "u3"}
    with pytest.raises(ValueError, match="k_core must be a positive int, got 0"):
        k_core_filter(df, 0)


def test_bucketized_quantiles_and_missing_values():
    inter = pd.DataFrame({"user": ["u"] * 6, "item": list("abcdef"), "price_paid": [1.0, 2, 3, 4, np.nan, 6]})
    spec = FeatureSpec("price_paid", "interaction", "bucketized", num_buckets=2)
    enc = encode(RawDataset("t", inter, features=[spec]))
    out_spec = enc.schema.feature("price_paid")
    assert out_spec.boundaries == [3.0]
    assert out_spec.vocab_size == 4
    np.testing.assert_array_equal(enc.interaction_features["price_paid"], [2, 2, 3, 3, 1, 3])
    assert spec.boundaries is None  # the declaration passed in is not modified


def test_feature_selection_and_errors(tiny_raw):
    enc = encode(tiny_raw, features=["rating"])
    assert [f.name for f in enc.schema.features] == ["rating"]
    assert enc.item_feature_tables == {}
    with pytest.raises(SchemaError, match=r"unknown feature\(s\) \['colour'\]"):
        encode(tiny_raw, features=["colour"])
    empty = RawDataset("e", pd.DataFrame({"user": ["a", "a"], "item": ["x", "y"]}))
    with pytest.raises(SchemaError, match="no user has 3 or more interactions"):
        encode(empty)
    bad = RawDataset(
        "b",
        tiny_raw.interactions,
        pd.DataFrame({"item": ["x"], "cat": ["c1"]}),
        [FeatureSpec("cat", "item", "multi_categorical", max_values=2)],
    )
    with pytest.raises(SchemaError, match="item 'x' has value 'c1'"):
        encode(bad)
    with pytest.raises(SchemaError, match="needs column 'brand'"):
        RawDataset("m", tiny_raw.interactions, tiny_raw.items, [FeatureSpec("brand", "item", "categorical")])
