import keras
import numpy as np
import pytest
from helpers import (
    ITEM_IDS,
    SASREC_DEFAULTS,
    assert_causal,
    assert_gradients_reach_every_weight,
    assert_padding_invariant,
    np_attention_mask,
    np_layer_norm,
    np_transformer_block,
    randomize_weights,
    run_backbone_test,
)

from tfsidefuse.models import Backbone, NextItemModel, SASRecBackbone
from tfsidefuse.models.registry import build_heads

INIT_KWARGS = {"num_items": 20, "max_len": 10, "hidden_dim": 8, "num_layers": 2, "num_heads": 2, "ff_dim": 16}


def _backbone(**kwargs) -> SASRecBackbone:
    keras.utils.set_random_seed(0)
    return SASRecBackbone(**{**INIT_KWARGS, **kwargs})


def test_backbone_behaviors(tmp_path):
    run_backbone_test(SASRecBackbone, INIT_KWARGS, {"item_ids": ITEM_IDS}, tmp_path)


def test_newest_first_serialization_round_trip(tmp_path):
    init_kwargs = {**INIT_KWARGS, "position_order": "newest_first"}
    run_backbone_test(SASRecBackbone, init_kwargs, {"item_ids": ITEM_IDS}, tmp_path)
    backbone = _backbone(position_order="newest_first")
    backbone({"item_ids": ITEM_IDS})
    assert backbone.position_embedding.order == "newest_first"
    assert SASRecBackbone.from_config(backbone.get_config()).position_order == "newest_first"


def test_position_orders_differ_only_through_the_positions():
    oldest, newest = _backbone(), _backbone(position_order="newest_first")
    inputs = {"item_ids": ITEM_IDS}
    oldest(inputs)
    newest(inputs)
    newest.set_weights(oldest.get_weights())
    # A full-length row numbers its slots 0..9 one way and 9..0 the other.
    full = np.arange(2, 12)[None, :]
    flipped_table = np.asarray(oldest.position_embedding.embeddings)[::-1]
    newest.position_embedding.embeddings.assign(flipped_table)
    np.testing.assert_allclose(
        newest({"item_ids": full})["sequence_output"], oldest({"item_ids": full})["sequence_output"], atol=1e-5
    )
    # A shorter row is not the same: its latest item sits at row 0 of the flipped table, not at row 9.
    short = np.array([[0, 0, 0, 5, 7, 9, 4, 3, 2, 8]])
    assert not np.allclose(
        newest({"item_ids": short})["sequence_output"], oldest({"item_ids": short})["sequence_output"], atol=1e-3
    )


def test_weights_and_defaults():
    backbone = SASRecBackbone(num_items=30)
    backbone({"item_ids": ITEM_IDS})
    assert isinstance(backbone, Backbone)
    config = backbone.get_config()
    assert {k: config[k] for k in SASREC_DEFAULTS} == SASREC_DEFAULTS
    # item and position tables, embedding layer norm, 16 weights per block.
    assert len(backbone.trainable_weights) == 2 + 2 + 2 * 16
    assert backbone.item_table() is backbone.item_embedding.embeddings
    assert build_heads("sasrec", {}, backbone) == []  # no auxiliary objective


@pytest.mark.parametrize("position_order", ["oldest_first", "newest_first"])
def test_padding_invariance(position_order):
    assert_padding_invariant(_backbone(position_order=position_order), {"item_ids": ITEM_IDS})


@pytest.mark.parametrize("position_order", ["oldest_first", "newest_first"])
def test_causality(position_order):
    assert_causal(_backbone(position_order=position_order), {"item_ids": ITEM_IDS}, {"item_ids": 20})


@pytest.mark.parametrize("position_order", ["oldest_first", "newest_first"])
def test_matches_numpy_reference(position_order):
    backbone = _backbone(position_order=position_order)
    backbone({"item_ids": ITEM_IDS})
    randomize_weights(backbone.weights)
    real = ITEM_IDS != 0
    if position_order == "oldest_first":
        positions = np.clip(np.cumsum(real, axis=1) - 1, 0, None)
    else:
        # Slot t counts the real items at t and after it, minus one.
        positions = np.clip(np.cumsum(real[:, ::-1], axis=1)[:, ::-1] - 1, 0, None)
    x = (
        np.asarray(backbone.item_embedding.embeddings)[ITEM_IDS]
        + np.asarray(backbone.position_embedding.embeddings)[positions]
    )
    x = np_layer_norm(backbone.embeddings_layer_norm, x.astype("float64"))
    for block in backbone.transformer_layers:
        x = np_transformer_block(block, x, np_attention_mask(ITEM_IDS, causal=True))
    outputs = np.asarray(backbone({"item_ids": ITEM_IDS})["sequence_output"])
    np.testing.assert_allclose(outputs[real], x[real], atol=1e-4)


def test_dropout_only_in_training():
    backbone = _backbone()
    inputs = {"item_ids": ITEM_IDS}
    np.testing.assert_allclose(backbone(inputs)["sequence_output"], backbone(inputs, training=False)["sequence_output"])
    assert not np.allclose(backbone(inputs, training=True)["sequence_output"], backbone(inputs)["sequence_output"])


def test_gradients_reach_every_weight():
    backbone = _backbone(dropout=0.0, attention_dropout=0.0)
    inputs = {"item_ids": ITEM_IDS}
    backbone(inputs)
    projection = np.random.default_rng(0).normal(size=(8,)).astype("float32")
    assert_gradients_reach_every_weight(
        backbone.trainable_variables,
        lambda: keras.ops.sum(keras.ops.tanh(backbone(inputs, training=True)["sequence_output"]) * projection),
    )


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"num_items": 2}, "num_items=2"),
        ({"max_len": 0}, "max_len=0"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"ff_dim": -1}, "ff_dim=-1"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"attention_dropout": -0.5}, "attention_dropout=-0.5"),
        ({"position_order": "latest"}, "position_order='latest'"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        SASRecBackbone(**{**INIT_KWARGS, **kwargs})


def test_last_position_only_equals_the_last_slot_of_the_full_call():
    keras.utils.set_random_seed(0)
    backbone = SASRecBackbone(num_items=20, max_len=6, hidden_dim=8, num_layers=2, num_heads=2, ff_dim=16)
    inputs = {"item_ids": np.array([[0, 0, 5, 7, 9, 3], [3, 4, 5, 6, 2, 8]], dtype="int32")}
    backbone(inputs)
    full = np.asarray(backbone(inputs)["sequence_output"])
    last = np.asarray(backbone(inputs, last_position_only=True)["sequence_output"])
    assert backbone.supports_last_position_only
    assert last.shape == (2, 1, 8)
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-5)
    model = NextItemModel(backbone)
    expected = full[:, -1] @ np.asarray(backbone.item_table()).T
    np.testing.assert_allclose(np.asarray(model(inputs))[:, 2:], expected[:, 2:], rtol=1e-4, atol=1e-5)
    # A backbone whose call has no `last_position_only` keeps the full call.
    assert not Backbone(num_items=20, hidden_dim=8, max_len=6).supports_last_position_only
