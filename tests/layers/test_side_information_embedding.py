import keras
import numpy as np
import pytest
from helpers import assert_gradients_reach_every_weight, run_model_saving_test, run_serialization_test

from tfsidefuse.layers import SideInformationEmbedding

NUM_ITEMS = 6
ITEM_FEATURES = [
    {"name": "category", "vocab_size": 5, "max_values": 3},
    {"name": "brand", "vocab_size": 4, "max_values": 1},
]
INTERACTION_FEATURES = [{"name": "rating", "vocab_size": 4}]
# Item -> category ids (multi-valued) and brand id; rows 0 (padding) and 1 (OOV) have no attributes.
CATEGORIES = np.array([[0, 0, 0], [0, 0, 0], [2, 0, 0], [2, 3, 0], [3, 4, 2], [0, 0, 0]], dtype="int64")
BRANDS = np.array([[0], [0], [2], [3], [3], [2]], dtype="int64")
TABLES = {"category": CATEGORIES, "brand": BRANDS}
# Embedding rows that make the pooled values easy to write by hand.
CATEGORY_VECTORS = np.array([[9.0, 9.0], [7.0, 7.0], [1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]], dtype="float32")
BRAND_VECTORS = np.array([[9.0, 9.0], [7.0, 7.0], [0.5, 1.0], [-2.0, 2.0]], dtype="float32")
RATING_VECTORS = np.array([[9.0, 9.0], [7.0, 7.0], [1.0, 0.0], [0.0, 1.0]], dtype="float32")
INPUTS = {
    "item_ids": np.array([[0, 2, 3, 4, 5], [3, 4, 1, 2, 2]], dtype="int32"),
    "rating": np.array([[0, 2, 3, 1, 3], [2, 2, 3, 3, 2]], dtype="int32"),
}


def _layer(**kwargs) -> SideInformationEmbedding:
    config = {
        "num_items": NUM_ITEMS,
        "embedding_dim": 2,
        "item_features": ITEM_FEATURES,
        "interaction_features": INTERACTION_FEATURES,
        **kwargs,
    }
    layer = SideInformationEmbedding(**config)
    layer.set_item_feature_tables(TABLES)
    return layer


def _hand_built(pooling: str) -> SideInformationEmbedding:
    layer = _layer(pooling=pooling)
    for embedding, vectors in zip(
        layer.item_feature_embeddings + layer.interaction_feature_embeddings,
        (CATEGORY_VECTORS, BRAND_VECTORS, RATING_VECTORS),
    ):
        embedding.embeddings.assign(vectors)
    return layer


def _np_pool(ids: np.ndarray, vectors: np.ndarray, pooling: str) -> np.ndarray:
    """Pooled embedding of one slot's ids, written with a loop over the valid values."""
    valid = [vectors[i] for i in ids if i != 0]
    if not valid:
        return np.zeros(vectors.shape[1])
    if pooling == "sum":
        return np.sum(valid, axis=0)
    if pooling == "mean":
        return np.mean(valid, axis=0)
    return np.max(valid, axis=0)


def test_layer_behaviors(tmp_path):
    init_kwargs = {
        "num_items": 20,
        "embedding_dim": 8,
        "item_features": ITEM_FEATURES,
        "interaction_features": INTERACTION_FEATURES,
        "pooling": "mean",
    }
    layer = SideInformationEmbedding(**init_kwargs)
    config = layer.get_config()
    assert all(key in config for key in init_kwargs)
    assert config["item_features"] == ITEM_FEATURES
    run_serialization_test(layer)

    outputs = layer(INPUTS)
    assert list(outputs) == ["category", "brand", "rating"] == layer.feature_names
    assert all(tuple(x.shape) == (2, 5, 8) for x in outputs.values())
    assert len(layer.trainable_weights) == 3  # one table per feature
    assert len(layer.non_trainable_weights) == 2  # one item -> attribute ids table per item feature
    assert all(len(w.path.split("/")) >= 2 for w in layer.weights)

    symbolic = {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in INPUTS}
    symbolic_layer = SideInformationEmbedding(**init_kwargs)
    symbolic_outputs = symbolic_layer(symbolic)
    assert {k: tuple(v.shape) for k, v in symbolic_outputs.items()} == {k: (None, None, 8) for k in outputs}

    # The item tables travel with the weights, not with the config.
    rng = np.random.default_rng(0)
    tables = {"category": rng.integers(0, 5, size=(20, 3)), "brand": rng.integers(0, 4, size=(20, 1))}
    for table in tables.values():
        table[0] = 0
    symbolic_layer.set_item_feature_tables(tables)
    assert "table" not in str(symbolic_layer.get_config())
    restored = run_model_saving_test(keras.Model(symbolic, symbolic_outputs), INPUTS, tmp_path)
    lookups = restored.get_layer(symbolic_layer.name).item_feature_lookups
    for feature, lookup in zip(ITEM_FEATURES, lookups):
        np.testing.assert_array_equal(lookup.table, tables[feature["name"]])

    mixed = SideInformationEmbedding(**init_kwargs, dtype="mixed_float16")
    for x in mixed(INPUTS).values():
        assert keras.backend.standardize_dtype(x.dtype) == "float16"
    assert all(w.dtype in ("float32", "int32") for w in mixed.weights)


@pytest.mark.parametrize("pooling", ["sum", "mean", "max"])
def test_matches_hand_pooled_values(pooling):
    outputs = _hand_built(pooling)(INPUTS)
    item_ids, ratings = INPUTS["item_ids"], INPUTS["rating"]
    for name, table, vectors in (("category", CATEGORIES, CATEGORY_VECTORS), ("brand", BRANDS, BRAND_VECTORS)):
        expected = np.array([[_np_pool(table[i], vectors, pooling) for i in row] for row in item_ids])
        np.testing.assert_allclose(outputs[name], expected, atol=1e-6)
    expected_ratings = np.where(ratings[..., None] == 0, 0.0, RATING_VECTORS[ratings])
    np.testing.assert_allclose(outputs["rating"], expected_ratings, atol=1e-6)


def test_sum_pooling_by_hand():
    outputs = _hand_built("sum")({"item_ids": np.array([[0, 2, 3, 4]]), "rating": np.array([[0, 2, 3, 1]])})
    # Items 0 (padding), 2: {2}, 3: {2, 3}, 4: {3, 4, 2}.
    np.testing.assert_allclose(outputs["category"][0], [[0, 0], [1, -2], [4, -1.5], [3, 2.5]], atol=1e-6)
    np.testing.assert_allclose(outputs["brand"][0], [[0, 0], [0.5, 1], [-2, 2], [-2, 2]], atol=1e-6)
    # Padding gives zeros; OOV (1) is a real row.
    np.testing.assert_allclose(outputs["rating"][0], [[0, 0], [1, 0], [0, 1], [7, 7]], atol=1e-6)


def test_tables_start_empty():
    layer = SideInformationEmbedding(NUM_ITEMS, 4, item_features=ITEM_FEATURES, interaction_features=())
    outputs = layer(INPUTS)
    assert list(outputs) == ["category", "brand"]
    assert all(np.all(np.asarray(x) == 0) for x in outputs.values())


def test_no_features_gives_an_empty_dict():
    layer = SideInformationEmbedding(NUM_ITEMS, 4)
    assert layer({"item_ids": INPUTS["item_ids"]}) == {}
    assert layer.weights == []


def test_missing_interaction_feature_is_named():
    with pytest.raises(ValueError, match="'rating'"):
        _layer()({"item_ids": INPUTS["item_ids"]})


def test_gradients_reach_every_weight():
    layer = _layer()
    layer(INPUTS)
    assert_gradients_reach_every_weight(
        layer.trainable_variables,
        lambda: sum(keras.ops.sum(keras.ops.tanh(x) * np.array([1.0, -0.5])) for x in layer(INPUTS).values()),
    )


@pytest.mark.parametrize(
    "tables, message",
    [
        ({"category": CATEGORIES}, r"lacks the item feature\(s\) \['brand'\]"),
        ({**TABLES, "colour": BRANDS}, r"unknown item feature\(s\) \['colour'\]"),
        ({**TABLES, "brand": BRANDS[:4]}, r"'brand'.*\(6, 1\).*\(4, 1\)"),
        ({**TABLES, "category": np.where(CATEGORIES == 4, -4, CATEGORIES)}, "'category'.*-4"),
        ({**TABLES, "brand": np.ones_like(BRANDS)}, "'brand'.*padding item"),
    ],
)
def test_set_item_feature_tables_validates(tables, message):
    layer = SideInformationEmbedding(NUM_ITEMS, 2, item_features=ITEM_FEATURES)
    with pytest.raises(ValueError, match=message):
        layer.set_item_feature_tables(tables)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"num_items": 0}, "num_items=0"),
        ({"embedding_dim": -2}, "embedding_dim=-2"),
        ({"pooling": "median"}, "median"),
        ({"item_features": [{"name": "category", "vocab_size": 0}]}, "vocab_size=0"),
        ({"item_features": [{"name": "category", "vocab_size": 5, "colour": 1}]}, "colour"),
        ({"item_features": [{"name": "my feature", "vocab_size": 5}]}, "my feature"),
        ({"interaction_features": [{"name": "rating"}]}, "vocab_size"),
        ({"interaction_features": [{"name": "item_ids", "vocab_size": 3}]}, "item_ids"),
        ({"interaction_features": [{"name": "category", "vocab_size": 3}]}, r"duplicate.*\['category'\]"),
        ({"item_features": "category"}, "category"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    config = {"num_items": NUM_ITEMS, "embedding_dim": 2, "item_features": ITEM_FEATURES, **kwargs}
    with pytest.raises(ValueError, match=bad):
        SideInformationEmbedding(**config)
