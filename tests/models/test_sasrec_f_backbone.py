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

from tfsidefuse.models import NextItemModel, SASRecBackbone, SASRecFBackbone
from tfsidefuse.models.registry import build_heads

INIT_KWARGS = SIDE_INIT_KWARGS
INPUTS = SIDE_INPUTS


def _backbone(**kwargs) -> SASRecFBackbone:
    keras.utils.set_random_seed(0)
    backbone = SASRecFBackbone(**{**INIT_KWARGS, "name": "sasrec_f", **kwargs})
    backbone.set_item_feature_tables(item_feature_tables())
    return backbone


def _np_backbone(backbone: SASRecFBackbone, item_ids: np.ndarray, ratings: np.ndarray) -> np.ndarray:
    """docs/models.md#sasrec_f at inference, from the backbone's weights."""
    side = backbone.side_information_embedding
    tables = item_feature_tables()
    features = [np.asarray(backbone.item_embedding.embeddings)[item_ids]]
    for feature, embedding in zip(ITEM_FEATURES, side.item_feature_embeddings):
        attribute_ids = tables[feature["name"]][item_ids]  # [batch, seq_len, m]
        vectors = np.asarray(embedding.embeddings)[attribute_ids] * (attribute_ids != 0)[..., None]
        features.append(vectors.sum(axis=-2))
    rating_vectors = np.asarray(side.interaction_feature_embeddings[0].embeddings)[ratings]
    features.append(rating_vectors * (ratings != 0)[..., None])
    real = item_ids != 0
    position = np.asarray(backbone.position_embedding.embeddings)[np.clip(np.cumsum(real, axis=1) - 1, 0, None)]
    if backbone.fuse_position:
        features.append(position)
    features = [f.astype("float64") for f in features]
    fusion = backbone.embedding_fusion
    if backbone.fusion == "add":
        x = np.sum(features, axis=0)
    elif backbone.fusion == "concat":
        x = np_dense(fusion.projection, np.concatenate(features, axis=-1))
    else:
        gates = np_softmax(np.stack([f @ np.asarray(fusion.gate_dense.kernel)[:, 0] for f in features], axis=-1))
        x = sum(gates[..., k : k + 1] * f for k, f in enumerate(features))
    if not backbone.fuse_position:
        x = x + position
    x = np_layer_norm(backbone.embeddings_layer_norm, x)
    for block in backbone.transformer_layers:
        x = np_transformer_block(block, x, np_attention_mask(item_ids, causal=True))
    return x


def test_backbone_behaviors(tmp_path):
    run_backbone_test(SASRecFBackbone, INIT_KWARGS, INPUTS, tmp_path)


def test_weights_and_defaults():
    backbone = SASRecFBackbone(num_items=30)
    backbone({"item_ids": ITEM_IDS})
    assert isinstance(backbone, SASRecBackbone)
    config = backbone.get_config()
    defaults = {
        **SASREC_DEFAULTS,
        "item_features": [],
        "interaction_features": [],
        "fusion": "concat",
        "gate_scorer": "linear",
        "pooling": "sum",
        "fuse_position": False,
    }
    assert {k: config[k] for k in defaults} == defaults
    # SASRec's 36 weights and the concat projection (kernel, bias).
    assert len(backbone.trainable_weights) == 36 + 2
    assert tuple(backbone.embedding_fusion.projection.kernel.shape) == (64, 64)

    backbone = _backbone()
    # SASRec's weights, three side tables, the concat projection over four features.
    assert len(backbone.trainable_weights) == 36 + 3 + 2
    assert len(backbone.non_trainable_weights) == 2  # the item -> attribute ids tables
    assert tuple(backbone.embedding_fusion.projection.kernel.shape) == (4 * 8, 8)
    assert backbone.item_table() is backbone.item_embedding.embeddings
    assert build_heads("sasrec_f", {}, backbone) == []  # no auxiliary objective


@pytest.mark.parametrize(
    "fusion, fuse_position", [("concat", False), ("add", False), ("gate", False), ("concat", True), ("gate", True)]
)
def test_matches_numpy_reference(fusion, fuse_position):
    backbone = _backbone(fusion=fusion, fuse_position=fuse_position)
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights)
    real = ITEM_IDS != 0
    expected = _np_backbone(backbone, ITEM_IDS, RATINGS)
    np.testing.assert_allclose(np.asarray(backbone(INPUTS)["sequence_output"])[real], expected[real], atol=1e-4)


def test_side_embeddings_are_zero_at_padding():
    outputs = _backbone().side_information_embedding(INPUTS)
    for vectors in outputs.values():
        np.testing.assert_array_equal(np.asarray(vectors)[ITEM_IDS == 0], 0.0)
        assert np.all(np.any(np.asarray(vectors)[ITEM_IDS != 0] != 0, axis=-1))


def test_every_fusion_and_fuse_position_change_the_output():
    def outputs(**kwargs):
        backbone = _backbone(**kwargs)
        backbone(INPUTS)
        # Same weights everywhere but in the fusion; random (non-zero) ones there.
        for w in backbone.weights:
            if "embedding_fusion" not in w.path:
                w.assign(shared[w.path])
        for w in backbone.embedding_fusion.weights:
            w.assign(np.random.default_rng(2).normal(size=w.shape).astype("float32"))
        return np.asarray(backbone(INPUTS)["sequence_output"])

    reference = _backbone()
    reference(INPUTS)
    shared = {w.path: w for w in reference.weights}
    results = {
        (fusion, fuse_position): outputs(fusion=fusion, fuse_position=fuse_position)
        for fusion in ("add", "concat", "gate")
        for fuse_position in (False, True)
    }
    # Adding the position inside or after an addition is the same.
    np.testing.assert_allclose(results[("add", True)], results[("add", False)], atol=1e-5)
    del results[("add", True)]
    keys = list(results)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not np.allclose(results[a], results[b], atol=1e-4), (a, b)
    # Side features matter: SASRec on the same weights gives something else.
    plain = SASRecBackbone(**{k: v for k, v in INIT_KWARGS.items() if "features" not in k}, name="sasrec_f")
    plain(INPUTS)
    for w in plain.weights:
        w.assign(shared[w.path])
    assert not np.allclose(np.asarray(plain(INPUTS)["sequence_output"]), results[("add", False)], atol=1e-4)


def test_padding_invariance():
    assert_padding_invariant(_backbone(fusion="gate"), INPUTS)


@pytest.mark.parametrize("changed_keys", [("item_ids",), ("rating",)])
def test_causality(changed_keys):
    vocab_sizes = {"item_ids": NUM_ITEMS, "rating": INTERACTION_FEATURES[0]["vocab_size"]}
    assert_causal(_backbone(fusion="gate", fuse_position=True), INPUTS, {k: vocab_sizes[k] for k in changed_keys})


@pytest.mark.parametrize("fusion, gate_scorer", [("concat", "linear"), ("gate", "mlp")])
def test_gradients_reach_every_weight(fusion, gate_scorer):
    backbone = _backbone(fusion=fusion, gate_scorer=gate_scorer, dropout=0.0, attention_dropout=0.0)
    backbone(INPUTS)
    names = [w.path for w in backbone.trainable_variables]
    assert sum("side_information_embedding" in n for n in names) == 3
    assert sum("embedding_fusion" in n for n in names) == (2 if fusion == "concat" else 3)
    projection = np.random.default_rng(0).normal(size=(8,)).astype("float32")
    assert_gradients_reach_every_weight(
        backbone.trainable_variables,
        lambda: keras.ops.sum(keras.ops.tanh(backbone(INPUTS, training=True)["sequence_output"]) * projection),
    )


def test_save_and_reload_keeps_predictions_and_tables(tmp_path):
    backbone = _backbone(fusion="gate", dropout=0.0, attention_dropout=0.0)
    model = NextItemModel(backbone)
    assert "table" not in str(backbone.get_config())
    restored = run_model_saving_test(model, INPUTS, tmp_path)
    assert isinstance(restored.backbone, SASRecFBackbone)
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
    assert_fit_trains(model, inputs, labels, backbone.side_information_embedding.trainable_weights)


def test_missing_interaction_feature_is_named():
    with pytest.raises(ValueError, match="'rating'"):
        _backbone()({"item_ids": ITEM_IDS})


def test_set_item_feature_tables_validates():
    backbone = SASRecFBackbone(**INIT_KWARGS)
    with pytest.raises(ValueError, match=r"lacks the item feature\(s\) \['brand'\]"):
        backbone.set_item_feature_tables({"category": item_feature_tables()["category"]})
    with pytest.raises(ValueError, match=r"unknown item feature\(s\) \['colour'\]"):
        backbone.set_item_feature_tables({**item_feature_tables(), "colour": item_feature_tables()["brand"]})


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"num_items": 2}, "num_items=2"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"fusion": "mean"}, "fusion='mean'"),
        ({"gate_scorer": "deep"}, "gate_scorer='deep'"),
        ({"pooling": "median"}, "pooling='median'"),
        ({"fuse_position": "yes"}, "fuse_position='yes'"),
        ({"item_features": [{"name": "category", "vocab_size": 0, "max_values": 2}]}, "vocab_size=0"),
        ({"interaction_features": [{"name": "brand", "vocab_size": 3}]}, "duplicate"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        SASRecFBackbone(**{**INIT_KWARGS, **kwargs})
