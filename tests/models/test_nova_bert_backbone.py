import keras
import numpy as np
import pytest
from helpers import (
    ITEM_FEATURES,
    ITEM_IDS,
    NUM_ITEMS,
    RATINGS,
    SIDE_INIT_KWARGS,
    assert_gradients_reach_every_weight,
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
)

from tfsidefuse.models import MaskedItemModel, NOVABackbone, NOVABERTBackbone
from tfsidefuse.models.registry import BACKBONES, side_feature_params

INIT_KWARGS = SIDE_INIT_KWARGS
MASK = NUM_ITEMS
#: `ITEM_IDS` with a [MASK] in a middle slot of the first window and in the last slot of the second.
MASKED_IDS = np.array([[0, 0, 5, MASK, 9, 3], [3, 4, 5, 6, 2, MASK]], dtype="int32")
INPUTS = {"item_ids": MASKED_IDS, "rating": RATINGS}
REAL = MASKED_IDS != 0


def _backbone(**kwargs) -> NOVABERTBackbone:
    keras.utils.set_random_seed(0)
    backbone = NOVABERTBackbone(**{**INIT_KWARGS, **kwargs})
    backbone.set_item_feature_tables(item_feature_tables())
    return backbone


def _random_backbone(**kwargs) -> NOVABERTBackbone:
    """Built, with `0.5 N(0, 1)` weights so that side information visibly steers the attention."""
    backbone = _backbone(**kwargs)
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights)
    return backbone


def _np_backbone(backbone: NOVABERTBackbone, item_ids: np.ndarray, ratings: np.ndarray) -> np.ndarray:
    """docs/models.md#nova and #nova_bert at inference: NOVA layers, bidirectional mask, [MASK] embeddings."""
    is_mask = (item_ids == MASK)[..., None]
    lookup_ids = np.where(item_ids == MASK, 0, item_ids)
    side_layer = backbone.side_information_embedding
    tables = item_feature_tables()
    side = []
    for index, (feature, embedding) in enumerate(zip(ITEM_FEATURES, side_layer.item_feature_embeddings)):
        attribute_ids = tables[feature["name"]][lookup_ids]
        pooled = (np.asarray(embedding.embeddings)[attribute_ids] * (attribute_ids != 0)[..., None]).sum(axis=-2)
        if backbone.side_mask_token:
            pooled = np.where(is_mask, np.asarray(backbone.side_mask_embeddings[index].embeddings), pooled)
        side.append(pooled)
    ratings_table = np.asarray(side_layer.interaction_feature_embeddings[0].embeddings)
    side.append(ratings_table[ratings] * (ratings != 0)[..., None])
    real = item_ids != 0
    side.append(np.asarray(backbone.position_embedding.embeddings)[np.clip(np.cumsum(real, axis=1) - 1, 0, None)])
    items = np.where(
        is_mask,
        np.asarray(backbone.mask_token_embedding.embeddings),
        np.asarray(backbone.item_embedding.embeddings)[lookup_ids],
    )
    side = [s.astype("float64") for s in side]
    stream = np_layer_norm(backbone.embeddings_layer_norm, items.astype("float64"))
    mask = np_attention_mask(item_ids, causal=False)
    for block in backbone.transformer_layers:
        attention = block.self_attention
        features = [stream] + side
        gate_kernel = np.asarray(attention.embedding_fusion.gate_dense.kernel)[:, 0]
        gates = np_softmax(np.stack([f @ gate_kernel for f in features], axis=-1))
        fused = sum(gates[..., k : k + 1] * f for k, f in enumerate(features))
        attended, _ = np_self_attention(attention.self_attention, fused, mask, fused, stream)
        hidden = np_layer_norm(block.attention_layer_norm, stream + attended)
        feedforward = np_dense(
            block.feedforward_output_dense, np_gelu(np_dense(block.feedforward_intermediate_dense, hidden))
        )
        stream = np_layer_norm(block.feedforward_layer_norm, hidden + feedforward)
    return stream


def test_backbone_behaviors(tmp_path):
    run_backbone_test(NOVABERTBackbone, INIT_KWARGS, INPUTS, tmp_path)


def test_weights_defaults_and_registry():
    backbone = _backbone()
    backbone(INPUTS)
    assert isinstance(backbone, NOVABackbone)
    assert backbone.task == "cloze" and backbone.causal is False and backbone.mask_token_id == NUM_ITEMS
    assert backbone.get_config()["side_mask_token"] is True
    # NOVA's weights plus the item [MASK] vector and one [MASK] vector per item feature.
    nova = NOVABackbone(**INIT_KWARGS)
    nova(INPUTS | {"item_ids": ITEM_IDS})
    assert len(backbone.trainable_weights) == len(nova.trainable_weights) + 1 + len(ITEM_FEATURES)
    assert len(_backbone(side_mask_token=False).trainable_weights) == len(nova.trainable_weights) + 1
    assert backbone.item_table() is backbone.item_embedding.embeddings
    assert tuple(backbone.item_table().shape) == (NUM_ITEMS, 8)
    assert BACKBONES["nova_bert"] is NOVABERTBackbone
    assert side_feature_params(NOVABERTBackbone) == ("item_features", "interaction_features")


@pytest.mark.parametrize("side_mask_token", [True, False])
def test_matches_numpy_reference(side_mask_token):
    backbone = _random_backbone(side_mask_token=side_mask_token)
    expected = _np_backbone(backbone, MASKED_IDS, RATINGS)
    np.testing.assert_allclose(np.asarray(backbone(INPUTS)["sequence_output"])[REAL], expected[REAL], atol=1e-4)


def test_bidirectional_a_later_item_changes_earlier_hidden_states():
    backbone = _random_backbone()
    before = np.asarray(backbone(INPUTS)["sequence_output"])
    changed = MASKED_IDS.copy()
    changed[0, -1], changed[1, -2] = 11, 12
    after = np.asarray(backbone({**INPUTS, "item_ids": changed})["sequence_output"])
    for row, last in ((0, 5), (1, 4)):
        for slot in range(last):
            if REAL[row, slot]:
                assert not np.allclose(after[row, slot], before[row, slot], atol=1e-5), (row, slot)


@pytest.mark.parametrize("side_mask_token", [True, False])
def test_mask_slots_get_mask_attributes_and_keep_behaviour_features(side_mask_token):
    backbone = _random_backbone(side_mask_token=side_mask_token)
    is_mask = MASKED_IDS == MASK
    side = [np.asarray(s) for s in backbone.side_information(INPUTS, REAL)]
    unmasked = [np.asarray(s) for s in backbone.side_information({**INPUTS, "item_ids": ITEM_IDS}, REAL)]
    for index in range(len(ITEM_FEATURES)):
        expected = np.asarray(backbone.side_mask_embeddings[index].embeddings) if side_mask_token else np.zeros(8)
        np.testing.assert_allclose(side[index][is_mask], np.broadcast_to(expected, (2, 8)), atol=1e-6)
        np.testing.assert_allclose(side[index][~is_mask], unmasked[index][~is_mask], atol=1e-6)
    # Rating and position are behaviour features: the same with or without the [MASK].
    for index in range(len(ITEM_FEATURES), len(side)):
        np.testing.assert_allclose(side[index], unmasked[index], atol=1e-6)
    # The item stream holds the [MASK] vector there.
    stream = np.asarray(backbone.item_stream_embeddings(INPUTS, REAL))
    np.testing.assert_allclose(
        stream[is_mask], np.broadcast_to(np.asarray(backbone.mask_token_embedding.embeddings), (2, 8)), atol=1e-6
    )


def test_padding_invariance():
    assert_padding_invariant(_backbone(), INPUTS)


def test_gradients_reach_every_weight():
    backbone = _backbone(dropout=0.0, attention_dropout=0.0)
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights, scale=0.3)
    projection = np.random.default_rng(0).normal(size=(8,)).astype("float32")
    names = [v.path for v in backbone.trainable_variables]
    assert sum("mask" in name for name in names) == 1 + len(ITEM_FEATURES)
    assert_gradients_reach_every_weight(
        backbone.trainable_variables,
        lambda: keras.ops.sum(keras.ops.tanh(backbone(INPUTS, training=True)["sequence_output"]) * projection),
    )


def test_masked_item_model_fit_and_save_reload(tmp_path):
    backbone = _backbone(dropout=0.1, attention_dropout=0.1)
    model = MaskedItemModel(backbone, mask_prob=0.5, seed=0)
    model.compile()
    inputs = {"item_ids": ITEM_IDS, "rating": RATINGS}
    history = model.fit(inputs, np.roll(ITEM_IDS, -1, axis=1), epochs=2, batch_size=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))
    restored = run_model_saving_test(model, inputs, tmp_path)
    np.testing.assert_array_equal(
        np.asarray(restored.backbone.side_information_embedding.item_feature_lookups[0].table),
        item_feature_tables()["category"],
    )
    np.testing.assert_allclose(
        np.asarray(restored.backbone.side_mask_embeddings[1].embeddings),
        np.asarray(backbone.side_mask_embeddings[1].embeddings),
    )


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"side_mask_token": "yes"}, "side_mask_token='yes'"),
        ({"fusion": "mean"}, "fusion='mean'"),
        ({"num_heads": 3}, "num_heads=3"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        NOVABERTBackbone(**{**INIT_KWARGS, **kwargs})
