import pytest

from tfsidefuse.data.schema import DatasetSchema, FeatureSpec, SchemaError


def test_feature_round_trip_through_yaml(tmp_path):
    schema = DatasetSchema(
        name="toy",
        max_len=20,
        num_items=12,
        num_users=7,
        features=[
            FeatureSpec("brand", "item", "categorical", vocab_size=5),
            FeatureSpec("cats", "item", "multi_categorical", max_values=3, column="categories"),
            FeatureSpec("gap", "interaction", "bucketized", boundaries=[1, 10], transform="time_gap"),
        ],
    )
    path = tmp_path / "schema.yaml"
    schema.save(path)
    loaded = DatasetSchema.load(path)
    assert loaded == schema
    assert [f.name for f in loaded.item_features] == ["brand", "cats"]
    assert [f.name for f in loaded.interaction_features] == ["gap"]
    assert loaded.feature("cats").source_column == "categories"
    assert loaded.feature("gap").boundaries == [1.0, 10.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "x", "level": "user", "kind": "categorical"}, "level must be one of .* got 'user'"),
        ({"name": "x", "level": "item", "kind": "numeric"}, "kind must be one of .* got 'numeric'"),
        ({"name": "x", "level": "item", "kind": "categorical", "max_values": 3}, "max_values=3 is only allowed"),
        ({"name": "x", "level": "interaction", "kind": "multi_categorical", "max_values": 2}, "must have level 'item'"),
        ({"name": "x", "level": "item", "kind": "bucketized"}, "need boundaries or num_buckets"),
        ({"name": "x", "level": "item", "kind": "bucketized", "boundaries": [3, 1]}, r"strictly increasing.*\[3, 1\]"),
        ({"name": "x", "level": "item", "kind": "categorical", "boundaries": [1]}, "only allowed for bucketized"),
        ({"name": "x", "level": "item", "kind": "bucketized", "boundaries": [1], "transform": "time_gap"}, "time_gap"),
        ({"name": "item_id", "level": "item", "kind": "categorical"}, "reserved"),
        ({"name": "not valid", "level": "item", "kind": "categorical"}, "identifier.*'not valid'"),
    ],
)
def test_invalid_feature_names_the_bad_value(kwargs, message):
    with pytest.raises(SchemaError, match=message):
        FeatureSpec(**kwargs)


def test_schema_rejects_unknown_keys_and_duplicates(tmp_path):
    with pytest.raises(SchemaError, match=r"unknown key\(s\) \['colour'\]"):
        DatasetSchema.from_dict(
            {"name": "a", "features": [{"name": "b", "level": "item", "kind": "categorical", "colour": 1}]}
        )
    with pytest.raises(SchemaError, match=r"unknown key\(s\) \['maxlen'\]"):
        DatasetSchema.from_dict({"name": "a", "maxlen": 3})
    with pytest.raises(SchemaError, match=r"duplicate feature name\(s\) \['b'\]"):
        DatasetSchema(name="a", features=[FeatureSpec("b", "item", "categorical")] * 2)
    with pytest.raises(SchemaError, match="missing required key 'kind'"):
        DatasetSchema.from_dict({"name": "a", "features": [{"name": "b", "level": "item"}]})
    schema = DatasetSchema(name="a", features=[FeatureSpec("b", "item", "categorical")])
    with pytest.raises(SchemaError, match="unknown feature 'zzz'"):
        schema.feature("zzz")
    with pytest.raises(FileNotFoundError):
        DatasetSchema.load(tmp_path / "missing.yaml")
