import keras
import numpy as np
import pytest
from helpers import (
    ITEM_IDS,
    SASREC_DEFAULTS,
    assert_gradients_reach_every_weight,
    assert_padding_invariant,
    np_attention_mask,
    np_layer_norm,
    np_transformer_block,
    randomize_weights,
    run_backbone_test,
    run_layer_test,
)

from tfsidefuse.layers import MaskTokenEmbedding
from tfsidefuse.layers.mask_token_embedding import without_mask_token
from tfsidefuse.models import Backbone, BERT4RecBackbone, SASRecBackbone

NUM_ITEMS = 20
MASK = NUM_ITEMS
INIT_KWARGS = {"num_items": NUM_ITEMS, "max_len": 10, "hidden_dim": 8, "num_layers": 2, "num_heads": 2, "ff_dim": 16}
#: `ITEM_IDS` with a [MASK] in a middle slot of the first window and in the last slot of the second.
MASKED_IDS = np.array([[0, 0, 5, MASK, 9, 3], [3, 4, 5, 6, 2, MASK]], dtype="int32")


def _backbone(**kwargs) -> BERT4RecBackbone:
    keras.utils.set_random_seed(0)
    return BERT4RecBackbone(**{**INIT_KWARGS, **kwargs})


def test_backbone_behaviors(tmp_path):
    run_backbone_test(BERT4RecBackbone, INIT_KWARGS, {"item_ids": MASKED_IDS}, tmp_path)


def test_mask_token_embedding_layer(tmp_path):
    run_layer_test(
        MaskTokenEmbedding,
        {"mask_token_id": MASK, "hidden_dim": 8},
        {"inputs": np.random.default_rng(0).normal(size=(2, 6, 8)).astype("float32"), "item_ids": MASKED_IDS},
        (2, 6, 8),
        tmp_path,
        expected_num_trainable_weights=1,
    )
    layer = MaskTokenEmbedding(MASK, 8)
    x = np.random.default_rng(1).normal(size=(2, 6, 8)).astype("float32")
    out = np.asarray(layer(x, MASKED_IDS))
    is_mask = MASKED_IDS == MASK
    np.testing.assert_allclose(out[~is_mask], x[~is_mask])
    np.testing.assert_allclose(out[is_mask], np.broadcast_to(np.asarray(layer.embeddings), (2, 8)))
    np.testing.assert_array_equal(without_mask_token(MASKED_IDS, MASK), np.where(is_mask, 0, MASKED_IDS))


def test_weights_defaults_and_item_table_excludes_the_mask_row():
    backbone = BERT4RecBackbone(num_items=30)
    backbone({"item_ids": ITEM_IDS})
    assert isinstance(backbone, SASRecBackbone) and isinstance(backbone, Backbone)
    assert backbone.task == "cloze" and backbone.causal is False and backbone.mask_token_id == 30
    config = backbone.get_config()
    assert {k: config[k] for k in SASREC_DEFAULTS} == SASREC_DEFAULTS
    # SASRec's weights plus the [MASK] vector.
    assert len(backbone.trainable_weights) == 2 + 2 + 2 * 16 + 1
    assert backbone.item_table() is backbone.item_embedding.embeddings
    assert tuple(backbone.item_table().shape) == (30, 64)


def test_padding_invariance():
    assert_padding_invariant(_backbone(), {"item_ids": MASKED_IDS})


def test_bidirectional_a_later_item_changes_earlier_hidden_states():
    backbone = _backbone()
    before = np.asarray(backbone({"item_ids": ITEM_IDS})["sequence_output"])
    changed = ITEM_IDS.copy()
    changed[:, -1] = [11, 12]
    after = np.asarray(backbone({"item_ids": changed})["sequence_output"])
    real = ITEM_IDS != 0
    for slot in range(5):
        rows = real[:, slot]
        assert not np.allclose(after[rows, slot], before[rows, slot]), f"slot {slot} does not see the last item"
    # The causal parent does not: same weights, causal mask.
    causal = _backbone()
    object.__setattr__(causal, "causal", True)
    np.testing.assert_allclose(
        np.asarray(causal({"item_ids": changed})["sequence_output"])[:, :5][real[:, :5]],
        np.asarray(causal({"item_ids": ITEM_IDS})["sequence_output"])[:, :5][real[:, :5]],
        atol=1e-6,
    )


def test_matches_numpy_reference():
    backbone = _backbone()
    backbone({"item_ids": MASKED_IDS})
    randomize_weights(backbone.weights)
    real = MASKED_IDS != 0
    positions = np.clip(np.cumsum(real, axis=1) - 1, 0, None)
    table = np.concatenate(
        [np.asarray(backbone.item_embedding.embeddings), np.asarray(backbone.mask_token_embedding.embeddings)[None]]
    )
    x = table[MASKED_IDS] + np.asarray(backbone.position_embedding.embeddings)[positions]
    x = np_layer_norm(backbone.embeddings_layer_norm, x.astype("float64"))
    for block in backbone.transformer_layers:
        x = np_transformer_block(block, x, np_attention_mask(MASKED_IDS, causal=False))
    outputs = np.asarray(backbone({"item_ids": MASKED_IDS})["sequence_output"])
    np.testing.assert_allclose(outputs[real], x[real], atol=1e-4)


def test_mask_token_is_its_own_embedding():
    backbone = _backbone(dropout=0.0, attention_dropout=0.0)
    as_oov = np.where(MASKED_IDS == MASK, 1, MASKED_IDS)
    out = np.asarray(backbone({"item_ids": MASKED_IDS})["sequence_output"])
    assert not np.allclose(out, np.asarray(backbone({"item_ids": as_oov})["sequence_output"]))


def test_dropout_only_in_training():
    backbone = _backbone()
    inputs = {"item_ids": MASKED_IDS}
    np.testing.assert_allclose(backbone(inputs)["sequence_output"], backbone(inputs, training=False)["sequence_output"])
    assert not np.allclose(backbone(inputs, training=True)["sequence_output"], backbone(inputs)["sequence_output"])


def test_gradients_reach_every_weight():
    backbone = _backbone(dropout=0.0, attention_dropout=0.0)
    inputs = {"item_ids": MASKED_IDS}
    backbone(inputs)
    projection = np.random.default_rng(0).normal(size=(8,)).astype("float32")
    names = [v.path for v in backbone.trainable_variables]
    assert any("mask_token_embedding" in name for name in names)
    assert_gradients_reach_every_weight(
        backbone.trainable_variables,
        lambda: keras.ops.sum(keras.ops.tanh(backbone(inputs, training=True)["sequence_output"]) * projection),
    )


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"num_items": 2}, "num_items=2"),
        ({"max_len": 0}, "max_len=0"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"dropout": 1.0}, "dropout=1.0"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        BERT4RecBackbone(**{**INIT_KWARGS, **kwargs})


def test_mask_token_embedding_invalid_arguments():
    with pytest.raises(ValueError, match="mask_token_id=0"):
        MaskTokenEmbedding(0, 8)
    with pytest.raises(ValueError, match="hidden_dim=-1"):
        MaskTokenEmbedding(5, -1)
