import keras
import numpy as np
import pytest
from helpers import (
    INTERACTION_FEATURES,
    ITEM_FEATURES,
    ITEM_IDS,
    NUM_ITEMS,
    RATINGS,
    REAL,
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
    np_gelu,
    np_layer_norm,
    np_self_attention,
    np_softmax,
    randomize_weights,
    run_backbone_test,
    run_model_saving_test,
    side_feature_batches,
)

from tfsidefuse.layers import NonInvasiveAttention
from tfsidefuse.models import NextItemModel, NOVABackbone
from tfsidefuse.models.registry import BACKBONES, build_backbone, build_heads, side_feature_params

INIT_KWARGS = SIDE_INIT_KWARGS
INPUTS = SIDE_INPUTS


def _backbone(**kwargs) -> NOVABackbone:
    keras.utils.set_random_seed(0)
    backbone = NOVABackbone(**{**INIT_KWARGS, "name": "nova", **kwargs})
    backbone.set_item_feature_tables(item_feature_tables())
    return backbone


def _random_backbone(**kwargs) -> NOVABackbone:
    """A built backbone with `0.5 N(0, 1)` weights: at the `N(0, 0.02)` initialization the side embeddings are tiny
    next to the layer-normalized item stream, so their effect would hide below the tolerances."""
    backbone = _backbone(**kwargs)
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights)
    return backbone


def _np_fusion(fusion, features):
    if fusion.mode == "add":
        return np.sum(features, axis=0)
    if fusion.mode == "concat":
        return np_dense(fusion.projection, np.concatenate(features, axis=-1))
    gates = np_softmax(np.stack([f @ np.asarray(fusion.gate_dense.kernel)[:, 0] for f in features], axis=-1))
    return sum(gates[..., k : k + 1] * f for k, f in enumerate(features))


def _np_backbone(backbone: NOVABackbone, item_ids: np.ndarray, ratings: np.ndarray) -> np.ndarray:
    """docs/models.md#nova at inference, from the backbone's weights."""
    side_layer = backbone.side_information_embedding
    tables = item_feature_tables()
    side = []
    for feature, embedding in zip(ITEM_FEATURES, side_layer.item_feature_embeddings):
        attribute_ids = tables[feature["name"]][item_ids]  # [batch, seq_len, m]
        vectors = np.asarray(embedding.embeddings)[attribute_ids] * (attribute_ids != 0)[..., None]
        side.append(vectors.sum(axis=-2))
    rating_vectors = np.asarray(side_layer.interaction_feature_embeddings[0].embeddings)[ratings]
    side.append(rating_vectors * (ratings != 0)[..., None])
    real = item_ids != 0
    position = np.asarray(backbone.position_embedding.embeddings)[np.clip(np.cumsum(real, axis=1) - 1, 0, None)]
    items = np.asarray(backbone.item_embedding.embeddings)[item_ids]
    if backbone.position_in_value_stream:
        items = items + position
    else:
        side.append(position)
    side = [s.astype("float64") for s in side]
    stream = np_layer_norm(backbone.embeddings_layer_norm, items.astype("float64"))
    mask = np_attention_mask(item_ids, causal=True)
    for block in backbone.transformer_layers:
        attention = block.self_attention
        fused = _np_fusion(attention.embedding_fusion, [stream] + side)
        attended, _ = np_self_attention(attention.self_attention, fused, mask, fused, stream)
        hidden = np_layer_norm(block.attention_layer_norm, stream + attended)
        feedforward = np_dense(
            block.feedforward_output_dense, np_gelu(np_dense(block.feedforward_intermediate_dense, hidden))
        )
        stream = np_layer_norm(block.feedforward_layer_norm, hidden + feedforward)
    return stream


def test_backbone_behaviors(tmp_path):
    run_backbone_test(NOVABackbone, INIT_KWARGS, INPUTS, tmp_path)


def test_weights_and_defaults():
    backbone = NOVABackbone(num_items=30)
    backbone({"item_ids": ITEM_IDS})
    config = backbone.get_config()
    defaults = {
        **SASREC_DEFAULTS,
        "item_features": [],
        "interaction_features": [],
        "fusion": "gate",
        "gate_scorer": "linear",
        "pooling": "sum",
        "position_in_value_stream": False,
    }
    assert {k: config[k] for k in defaults} == defaults
    # SASRec's 36 weights and one linear gate per layer; the position is the only side feature.
    assert len(backbone.trainable_weights) == 36 + 2
    assert backbone.num_side_features == 1

    backbone = _backbone(fusion="concat")
    # SASRec's weights, three side tables, one concat projection over item stream + 4 side features per layer.
    assert len(backbone.trainable_weights) == 36 + 3 + 2 * 2
    assert len(backbone.non_trainable_weights) == 2  # the item -> attribute ids tables
    for block in backbone.transformer_layers:
        assert isinstance(block.self_attention, NonInvasiveAttention)
        assert tuple(block.self_attention.embedding_fusion.projection.kernel.shape) == (5 * 8, 8)
    assert backbone.item_table() is backbone.item_embedding.embeddings
    assert build_heads("nova", {}, backbone) == []  # no auxiliary objective
    assert _backbone(position_in_value_stream=True).num_side_features == 3


def test_registered():
    assert BACKBONES["nova"] is NOVABackbone
    assert side_feature_params(NOVABackbone) == ("item_features", "interaction_features")


@pytest.mark.parametrize(
    "fusion, position_in_value_stream",
    [("gate", False), ("add", False), ("concat", False), ("gate", True), ("concat", True)],
)
def test_matches_numpy_reference(fusion, position_in_value_stream):
    backbone = _random_backbone(fusion=fusion, position_in_value_stream=position_in_value_stream)
    expected = _np_backbone(backbone, ITEM_IDS, RATINGS)
    np.testing.assert_allclose(np.asarray(backbone(INPUTS)["sequence_output"])[REAL], expected[REAL], atol=1e-4)


def test_values_carry_no_side_information():
    """A window repeating one item has the same item stream at every slot, so no side information can reach the
    hidden states: attention only mixes item-stream values, whatever weights the side information gives them."""
    backbone = _random_backbone(fusion="gate")
    same_item = {"item_ids": np.where(REAL, 5, 0).astype("int32"), "rating": RATINGS}
    hidden = np.asarray(backbone(same_item)["sequence_output"])
    other_ratings = np.where(REAL, RATINGS % 5 + 1, 0).astype("int32")
    np.testing.assert_allclose(
        np.asarray(backbone({**same_item, "rating": other_ratings})["sequence_output"])[REAL], hidden[REAL], atol=1e-5
    )
    # Zeroed side tables and positions change nothing either.
    side_weights = backbone.side_information_embedding.trainable_weights + backbone.position_embedding.weights
    saved = [np.array(w) for w in side_weights]
    for w in side_weights:
        w.assign(np.zeros(w.shape, "float32"))
    np.testing.assert_allclose(np.asarray(backbone(same_item)["sequence_output"])[REAL], hidden[REAL], atol=1e-5)
    # With different items the side information does steer the attention.
    without_side = np.asarray(backbone(INPUTS)["sequence_output"])
    for w, value in zip(side_weights, saved):
        w.assign(value)
    assert not np.allclose(np.asarray(backbone(INPUTS)["sequence_output"])[REAL], without_side[REAL], atol=1e-4)
    assert not np.allclose(
        np.asarray(backbone({**INPUTS, "rating": other_ratings})["sequence_output"])[REAL],
        np.asarray(backbone(INPUTS)["sequence_output"])[REAL],
        atol=1e-4,
    )
    # Position in the value stream (the invasive reading) makes the slots of the same window differ.
    invasive = _random_backbone(fusion="gate", position_in_value_stream=True)
    positional = np.asarray(invasive(same_item)["sequence_output"])
    assert not np.allclose(positional[1, 0], positional[1, -1], atol=1e-4)
    # And a NOVA window's hidden state is the same vector at every slot.
    np.testing.assert_allclose(hidden[1], np.broadcast_to(hidden[1, :1], hidden[1].shape), atol=1e-5)


def test_every_fusion_and_position_in_value_stream_change_the_output():
    reference = _random_backbone()
    shared = {w.path: np.array(w) for w in reference.weights}

    def outputs(**kwargs):
        backbone = _backbone(**kwargs)
        backbone(INPUTS)
        # Same weights everywhere but in the fusions; random (non-zero) ones there.
        for w in backbone.weights:
            if "embedding_fusion" in w.path:
                w.assign(np.random.default_rng(2).normal(size=w.shape).astype("float32"))
            else:
                w.assign(shared[w.path])
        return np.asarray(backbone(INPUTS)["sequence_output"])

    results = {
        (fusion, in_values): outputs(fusion=fusion, position_in_value_stream=in_values)
        for fusion in ("add", "concat", "gate")
        for in_values in (False, True)
    }
    results["mlp"] = outputs(fusion="gate", gate_scorer="mlp")
    keys = list(results)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not np.allclose(results[a][REAL], results[b][REAL], atol=1e-4), (a, b)


def test_padding_invariance():
    assert_padding_invariant(_random_backbone(fusion="gate"), INPUTS, atol=1e-4)
    assert_padding_invariant(_random_backbone(fusion="concat", position_in_value_stream=True), INPUTS, atol=1e-4)


@pytest.mark.parametrize("changed_keys", [("item_ids",), ("rating",)])
def test_causality(changed_keys):
    vocab_sizes = {"item_ids": NUM_ITEMS, "rating": INTERACTION_FEATURES[0]["vocab_size"]}
    assert_causal(_random_backbone(fusion="gate"), INPUTS, {k: vocab_sizes[k] for k in changed_keys}, atol=1e-5)


class _BidirectionalNOVA(NOVABackbone):
    causal = False


def test_a_subclass_changes_the_mask_with_one_attribute():
    causal = _random_backbone()
    bidirectional = _BidirectionalNOVA(**INIT_KWARGS, name="nova")
    bidirectional.set_item_feature_tables(item_feature_tables())
    bidirectional(INPUTS)
    for a, b in zip(causal.weights, bidirectional.weights):
        b.assign(a)
    changed = {"item_ids": ITEM_IDS, "rating": np.where(REAL, RATINGS % 5 + 1, 0).astype("int32")}
    changed["rating"][:, :-1] = RATINGS[:, :-1]  # only the last slot's rating changes
    for backbone, earlier_slots_change in ((causal, False), (bidirectional, True)):
        before, after = (
            np.asarray(backbone(INPUTS)["sequence_output"]),
            np.asarray(backbone(changed)["sequence_output"]),
        )
        assert np.allclose(before[:, :-1][REAL[:, :-1]], after[:, :-1][REAL[:, :-1]], atol=1e-5) != earlier_slots_change
    np.testing.assert_array_equal(
        np.asarray(bidirectional.compute_attention_mask(REAL)), np_attention_mask(ITEM_IDS, causal=False)
    )


@pytest.mark.parametrize("fusion, gate_scorer", [("concat", "linear"), ("gate", "mlp")])
def test_gradients_reach_every_weight(fusion, gate_scorer):
    backbone = _backbone(fusion=fusion, gate_scorer=gate_scorer, dropout=0.0, attention_dropout=0.0)
    backbone(INPUTS)
    names = [w.path for w in backbone.trainable_variables]
    assert sum("side_information_embedding" in n for n in names) == 3
    assert sum("embedding_fusion" in n for n in names) == 2 * (2 if fusion == "concat" else 3)
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
    assert isinstance(restored.backbone, NOVABackbone)
    assert restored.backbone.get_config() == backbone.get_config()
    assert_item_feature_tables(restored.backbone, item_feature_tables())
    np.testing.assert_allclose(
        restored.predict(INPUTS, verbose=0), model.predict(INPUTS, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_builds_from_a_schema():
    from tfsidefuse.data.schema import DatasetSchema, FeatureSpec

    schema = DatasetSchema(
        "tiny",
        features=[
            FeatureSpec("category", "item", "multi_categorical", max_values=2, vocab_size=7),
            FeatureSpec("rating", "interaction", "categorical", vocab_size=6),
        ],
        num_items=NUM_ITEMS,
        max_len=6,
    )
    params = {"hidden_dim": 8, "num_heads": 2, "ff_dim": 16, "num_layers": 1, "features": ["category", "rating"]}
    backbone = build_backbone(
        "nova", params, schema=schema, item_feature_tables={"category": item_feature_tables()["category"]}
    )
    assert backbone.num_side_features == 3
    assert tuple(backbone(INPUTS)["sequence_output"].shape) == (2, 6, 8)


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
    backbone = NOVABackbone(**INIT_KWARGS)
    with pytest.raises(ValueError, match=r"lacks the item feature\(s\) \['brand'\]"):
        backbone.set_item_feature_tables({"category": item_feature_tables()["category"]})


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"num_items": 2}, "num_items=2"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"fusion": "mean"}, "fusion='mean'"),
        ({"gate_scorer": "deep"}, "gate_scorer='deep'"),
        ({"pooling": "median"}, "pooling='median'"),
        ({"position_in_value_stream": "yes"}, "position_in_value_stream='yes'"),
        ({"item_features": [{"name": "category", "vocab_size": 0, "max_values": 2}]}, "vocab_size=0"),
        ({"interaction_features": [{"name": "brand", "vocab_size": 3}]}, "duplicate"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        NOVABackbone(**{**INIT_KWARGS, **kwargs})
