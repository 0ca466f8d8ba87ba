import keras
import numpy as np
import pytest
from helpers import (
    INTERACTION_FEATURES,
    ITEM_FEATURES,
    ITEM_IDS,
    NUM_ITEMS,
    RATINGS,
    SASREC_DEFAULTS,
    SIDE_INIT_KWARGS,
    SIDE_INPUTS,
    assert_causal,
    assert_fit_trains,
    assert_gradients_reach_every_weight,
    assert_item_feature_tables,
    assert_padding_invariant,
    item_feature_tables,
    np_attention_mask,
    np_dense,
    np_layer_norm,
    np_softmax,
    np_transformer_block,
    randomize_weights,
    run_backbone_test,
    run_model_saving_test,
    side_feature_batches,
)

from tfsidefuse.models import FDSABackbone, NextItemModel, SASRecBackbone
from tfsidefuse.models.registry import BACKBONES, build_heads

INIT_KWARGS = SIDE_INIT_KWARGS
INPUTS = SIDE_INPUTS
# SASRec's 36 weights, 3 side tables, the vanilla attention (W_1, b_1, w_2), a second encoder, W^o and b^o.
NUM_DEFAULT_WEIGHTS = 36 + 3 + 3 + 32 + 2


def _backbone(**kwargs) -> FDSABackbone:
    keras.utils.set_random_seed(0)
    backbone = FDSABackbone(**{**INIT_KWARGS, "name": "fdsa", **kwargs})
    backbone.set_item_feature_tables(item_feature_tables())
    return backbone


def _np_pool(vectors: np.ndarray, valid: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "max":
        pooled = np.where(valid[..., None], vectors, -np.inf).max(axis=-2)
        return np.where(valid.any(axis=-1)[..., None], pooled, 0.0)
    summed = (vectors * valid[..., None]).sum(axis=-2)
    return summed if pooling == "sum" else summed / (valid.sum(axis=-1, keepdims=True) + 1e-8)


def _np_backbone(backbone: FDSABackbone, item_ids: np.ndarray, ratings: np.ndarray) -> np.ndarray:
    """docs/models.md#fdsa at inference, from the backbone's weights, at every slot."""
    side = backbone.side_information_embedding
    tables = item_feature_tables()
    real = item_ids != 0
    position = np.asarray(backbone.position_embedding.embeddings)[np.clip(np.cumsum(real, axis=1) - 1, 0, None)]
    mask = np_attention_mask(item_ids, causal=True)
    shared = backbone.embeddings_layer_norm
    feature_norm = shared if backbone.share_layer_norm else backbone.feature_layer_norm
    output_norm = shared if backbone.share_layer_norm else backbone.output_layer_norm

    # Item tower.
    x = np_layer_norm(shared, np.asarray(backbone.item_embedding.embeddings)[item_ids] + position)
    for block in backbone.transformer_layers:
        x = np_transformer_block(block, x, mask)

    # Feature tower.
    features = []
    for feature, embedding in zip(ITEM_FEATURES, side.item_feature_embeddings):
        attribute_ids = tables[feature["name"]][item_ids]  # [batch, seq_len, m]
        features.append(_np_pool(np.asarray(embedding.embeddings)[attribute_ids], attribute_ids != 0, backbone.pooling))
    rating_vectors = np.asarray(side.interaction_feature_embeddings[0].embeddings)[ratings]
    features.append(rating_vectors * (ratings != 0)[..., None])
    features = [f.astype("float64") for f in features]
    fusion = backbone.feature_fusion_layer
    if backbone.feature_fusion == "add":
        f = np.sum(features, axis=0)
    elif backbone.feature_fusion == "concat":
        f = np_dense(fusion.projection, np.concatenate(features, axis=-1))
    else:
        if backbone.gate_scorer == "linear":
            scores = [g @ np.asarray(fusion.gate_dense.kernel)[:, 0] for g in features]
        else:
            w_2 = np.asarray(fusion.gate_output_dense.kernel)[:, 0]
            scores = [np.maximum(np_dense(fusion.gate_hidden_dense, g), 0.0) @ w_2 for g in features]
        alpha = np_softmax(np.stack(scores, axis=-1))
        f = sum(alpha[..., k : k + 1] * g for k, g in enumerate(features))
    y = np_layer_norm(feature_norm, f + position)
    for block in backbone.feature_transformer_layers:
        y = np_transformer_block(block, y, mask)

    return np_layer_norm(output_norm, np_dense(backbone.tower_fusion.projection, np.concatenate([x, y], axis=-1)))


def test_backbone_behaviors(tmp_path):
    run_backbone_test(FDSABackbone, INIT_KWARGS, INPUTS, tmp_path)


def test_registered():
    assert BACKBONES["fdsa"] is FDSABackbone


def test_weights_and_defaults():
    backbone = FDSABackbone(num_items=30, item_features=[{"name": "category", "vocab_size": 5, "max_values": 3}])
    backbone({"item_ids": ITEM_IDS})
    assert isinstance(backbone, SASRecBackbone)
    config = backbone.get_config()
    defaults = {
        **SASREC_DEFAULTS,
        "interaction_features": [],
        "pooling": "mean",
        "feature_fusion": "gate",
        "gate_scorer": "mlp",
        "share_layer_norm": True,
        "output_dropout": None,
    }
    assert {k: config[k] for k in defaults} == defaults
    assert tuple(backbone.tower_fusion.projection.kernel.shape) == (128, 64)

    backbone = _backbone()
    backbone(INPUTS)
    assert len(backbone.trainable_weights) == NUM_DEFAULT_WEIGHTS
    assert len(backbone.non_trainable_weights) == 2  # the item -> attribute ids tables
    assert tuple(backbone.feature_fusion_layer.gate_hidden_dense.kernel.shape) == (8, 8)
    assert tuple(backbone.tower_fusion.projection.kernel.shape) == (16, 8)
    assert backbone.item_table() is backbone.item_embedding.embeddings
    assert build_heads("fdsa", {}, backbone) == []  # no auxiliary objective

    # Unshared: two more layer norms.
    backbone = _backbone(share_layer_norm=False)
    backbone(INPUTS)
    assert len(backbone.trainable_weights) == NUM_DEFAULT_WEIGHTS + 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"gate_scorer": "linear", "pooling": "sum", "share_layer_norm": False},
        {"feature_fusion": "add", "pooling": "max"},
        {"feature_fusion": "concat", "share_layer_norm": False},
    ],
)
def test_matches_numpy_reference(kwargs):
    backbone = _backbone(**kwargs)
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights)
    real = ITEM_IDS != 0
    expected = _np_backbone(backbone, ITEM_IDS, RATINGS)
    np.testing.assert_allclose(np.asarray(backbone(INPUTS)["sequence_output"])[real], expected[real], atol=1e-4)


def test_every_flag_changes_the_output():
    reference = _backbone()
    reference(INPUTS)
    randomize_weights(reference.trainable_weights)
    shared = {w.path: w for w in reference.weights}
    expected = np.asarray(reference(INPUTS)["sequence_output"])

    def outputs(**kwargs):
        backbone = _backbone(**kwargs)
        backbone(INPUTS)
        # The reference's weights wherever they exist; random ones for the variant's own.
        rng = np.random.default_rng(2)
        for w in backbone.weights:
            w.assign(shared[w.path] if w.path in shared else rng.normal(size=w.shape).astype("float32"))
        return np.asarray(backbone(INPUTS)["sequence_output"])

    variants = [
        {"pooling": "sum"},
        {"pooling": "max"},
        {"feature_fusion": "add"},
        {"feature_fusion": "concat"},
        {"gate_scorer": "linear"},
        {"share_layer_norm": False},
    ]
    for kwargs in variants:
        assert not np.allclose(outputs(**kwargs), expected, atol=1e-4), kwargs
    # The copy itself is exact: the default configuration gives the reference's output.
    np.testing.assert_allclose(outputs(), expected, atol=1e-6)


def test_both_towers_matter():
    backbone = _backbone()
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights)
    before = np.asarray(backbone(INPUTS)["sequence_output"])
    # Other item attributes for the same item ids change the output (feature tower).
    tables = item_feature_tables()
    tables["brand"][1:] = tables["brand"][1:] % 4 + 1
    backbone.set_item_feature_tables(tables)
    assert not np.allclose(np.asarray(backbone(INPUTS)["sequence_output"]), before, atol=1e-4)
    backbone.set_item_feature_tables(item_feature_tables())
    # Other item embeddings with the same attributes change it too (item tower).
    backbone.item_embedding.embeddings.assign(np.asarray(backbone.item_embedding.embeddings)[::-1])
    assert not np.allclose(np.asarray(backbone(INPUTS)["sequence_output"]), before, atol=1e-4)


def test_padding_invariance():
    assert_padding_invariant(_backbone(share_layer_norm=False), INPUTS)


@pytest.mark.parametrize("changed_keys", [("item_ids",), ("rating",), ("item_ids", "rating")])
def test_causality(changed_keys):
    vocab_sizes = {"item_ids": NUM_ITEMS, "rating": INTERACTION_FEATURES[0]["vocab_size"]}
    assert_causal(_backbone(), INPUTS, {k: vocab_sizes[k] for k in changed_keys})


@pytest.mark.parametrize(
    "kwargs, num_fusion_weights",
    [({}, 3), ({"feature_fusion": "concat", "share_layer_norm": False}, 2)],
)
def test_gradients_reach_every_weight(kwargs, num_fusion_weights):
    backbone = _backbone(**kwargs, dropout=0.0, attention_dropout=0.0)
    backbone(INPUTS)
    names = [w.path for w in backbone.trainable_variables]
    assert sum("side_information_embedding" in n for n in names) == 3
    assert sum("feature_fusion" in n for n in names) == num_fusion_weights
    assert sum("feature_transformer_layer" in n for n in names) == 32
    assert sum("tower_fusion" in n for n in names) == 2
    projection = np.random.default_rng(0).normal(size=(8,)).astype("float32")
    assert_gradients_reach_every_weight(
        backbone.trainable_variables,
        lambda: keras.ops.sum(keras.ops.tanh(backbone(INPUTS, training=True)["sequence_output"]) * projection),
    )


def test_save_and_reload_keeps_predictions_and_tables(tmp_path):
    backbone = _backbone(share_layer_norm=False, dropout=0.0, attention_dropout=0.0)
    model = NextItemModel(backbone)
    assert "table" not in str(backbone.get_config())
    restored = run_model_saving_test(model, INPUTS, tmp_path)
    assert isinstance(restored.backbone, FDSABackbone)
    assert restored.backbone.get_config() == backbone.get_config()
    assert_item_feature_tables(restored.backbone, item_feature_tables())
    np.testing.assert_allclose(
        restored.predict(INPUTS, verbose=0), model.predict(INPUTS, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_fit_with_an_interaction_feature():
    keras.utils.set_random_seed(0)
    backbone = _backbone(dropout=0.1, attention_dropout=0.1)
    model = NextItemModel(backbone)
    inputs, labels = side_feature_batches()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=[])
    feature_tower = backbone.side_information_embedding.trainable_weights + [
        backbone.feature_transformer_layers[0].trainable_weights[0]
    ]
    assert_fit_trains(model, inputs, labels, feature_tower)


def test_missing_interaction_feature_is_named():
    with pytest.raises(ValueError, match="'rating'"):
        _backbone()({"item_ids": ITEM_IDS})


def test_set_item_feature_tables_validates():
    backbone = FDSABackbone(**INIT_KWARGS)
    with pytest.raises(ValueError, match=r"lacks the item feature\(s\) \['brand'\]"):
        backbone.set_item_feature_tables({"category": item_feature_tables()["category"]})
    with pytest.raises(ValueError, match=r"unknown item feature\(s\) \['colour'\]"):
        backbone.set_item_feature_tables({**item_feature_tables(), "colour": item_feature_tables()["brand"]})


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"num_items": 2}, "num_items=2"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"pooling": "median"}, "pooling='median'"),
        ({"feature_fusion": "mean"}, "feature_fusion='mean'"),
        ({"gate_scorer": "deep"}, "gate_scorer='deep'"),
        ({"share_layer_norm": "yes"}, "share_layer_norm='yes'"),
        ({"output_dropout": 1.0}, "output_dropout=1.0"),
        ({"output_dropout": "0.1"}, "output_dropout='0.1'"),
        ({"output_dropout": True}, "output_dropout=True"),
        ({"item_features": [{"name": "category", "vocab_size": 0, "max_values": 2}]}, "vocab_size=0"),
        ({"interaction_features": [{"name": "brand", "vocab_size": 3}]}, "duplicate"),
        ({"item_features": [], "interaction_features": ()}, r"item_features=\[\], interaction_features=\(\)"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        FDSABackbone(**{**INIT_KWARGS, **kwargs})


def test_output_dropout_drops_only_the_scored_vector():
    # In training, a dropout rate r zeroes about a fraction r of the scored vector (a layer norm's output is never
    # exactly 0 otherwise). `None` takes `dropout`; 0.0 leaves the output whole while the rest still drops.
    mask = ITEM_IDS != 0
    fractions = {}
    for rate in (None, 0.0, 0.25):
        backbone = _backbone(dropout=0.5, output_dropout=rate)
        output = np.asarray(backbone(INPUTS, training=True)["sequence_output"])[mask]
        fractions[rate] = float(np.mean(output == 0.0))
        assert backbone.output_dropout.rate == (0.5 if rate is None else rate)
        assert backbone.get_config()["output_dropout"] == rate
        # At inference no dropout applies, whatever the rate.
        inference = np.asarray(backbone(INPUTS)["sequence_output"])[mask]
        assert not np.any(inference == 0.0)
    assert fractions[0.0] == 0.0
    assert 0.35 < fractions[None] < 0.65, fractions
    assert 0.1 < fractions[0.25] < 0.4, fractions
    # The other dropouts still act with output_dropout=0.0: two training calls differ.
    backbone = _backbone(dropout=0.5, output_dropout=0.0)
    first, second = (np.asarray(backbone(INPUTS, training=True)["sequence_output"]) for _ in range(2))
    assert not np.allclose(first[mask], second[mask])


def test_a_single_feature_enters_as_it_is_under_add_and_gate():
    # One feature: add and gate fusion are the identity (a softmax over one feature is 1), so the tower has no
    # fusion weights and both give the same output; concat keeps its projection.
    one_feature = {"item_features": ITEM_FEATURES[:1], "interaction_features": []}
    outputs = {}
    for fusion in ("add", "gate", "concat"):
        keras.utils.set_random_seed(0)
        backbone = FDSABackbone(**{**INIT_KWARGS, **one_feature, "feature_fusion": fusion})
        backbone.set_item_feature_tables({ITEM_FEATURES[0]["name"]: item_feature_tables()[ITEM_FEATURES[0]["name"]]})
        outputs[fusion] = np.asarray(backbone({"item_ids": ITEM_IDS})["sequence_output"])
        if fusion == "concat":
            assert tuple(backbone.feature_fusion_layer.projection.kernel.shape) == (8, 8)
        else:
            assert backbone.feature_fusion_layer is None
            assert not any("feature_fusion" in w.path for w in backbone.weights)
    np.testing.assert_array_equal(outputs["add"], outputs["gate"])
    assert not np.allclose(outputs["add"], outputs["concat"], atol=1e-4)
