import logging

import keras
import numpy as np
import pytest
from helpers import ITEM_IDS, REAL, np_attention_mask, np_layer_norm, np_self_attention, np_transformer_block

from tfsidefuse.analysis.attention import attention_probabilities, capture_attention, transformer_blocks
from tfsidefuse.analysis.examples import load_examples
from tfsidefuse.analysis.rank import attention_rank
from tfsidefuse.layers import SelfAttention, TransformerBlock
from tfsidefuse.layers.masks import attention_mask, padding_mask
from tfsidefuse.models import SASRecBackbone
from tfsidefuse.models.registry import BACKBONES
from tfsidefuse.training.trainer import load_trained


def sasrec():
    keras.utils.set_random_seed(0)
    backbone = SASRecBackbone(num_items=20, max_len=6, hidden_dim=8, num_layers=2, num_heads=2, ff_dim=16)
    backbone({"item_ids": ITEM_IDS})
    return backbone


def encoder_input(backbone, inputs):
    mask = padding_mask(inputs["item_ids"])
    x = backbone.input_embeddings(inputs, mask)
    return np.asarray(backbone.embeddings_layer_norm(x))


def check_probabilities(p, ids, causal=True):
    allowed = np_attention_mask(ids, causal)[:, None]  # [B, 1, T, T]
    real = ids != 0
    np.testing.assert_allclose(p.sum(-1)[np.broadcast_to(real[:, None], p.shape[:3])], 1.0, atol=1e-5)
    assert np.all(p[np.broadcast_to(~allowed, p.shape) & real[:, None, :, None]] < 1e-6)


def test_captured_probabilities_match_numpy_sasrec():
    backbone = sasrec()
    inputs = {"item_ids": ITEM_IDS}
    expected_hidden = np.asarray(backbone(inputs, training=False)["sequence_output"])
    with capture_attention(backbone) as captured:
        hidden = np.asarray(backbone(inputs, training=False)["sequence_output"])
    # The forward pass is unchanged and the original `call` is back.
    np.testing.assert_allclose(hidden, expected_hidden, atol=1e-6)
    assert all("call" not in vars(b.self_attention) for b in transformer_blocks(backbone))
    assert captured.layer_names == ["transformer_layer_0/self_attention", "transformer_layer_1/self_attention"]
    assert captured.skipped == []

    mask = np_attention_mask(ITEM_IDS)
    x = encoder_input(backbone, inputs)
    for block, probabilities in zip(backbone.transformer_layers, captured.latest()):
        _, reference = np_self_attention(block.self_attention, x, mask)
        assert probabilities.shape == (2, 2, 6, 6)
        real_rows = np.broadcast_to(REAL[:, None, :, None], reference.shape)
        np.testing.assert_allclose(probabilities[real_rows], reference[real_rows], atol=1e-5)
        # The layer's own output with return_attention_scores=True.
        _, direct = block.self_attention(x, attention_mask=mask, return_attention_scores=True)
        np.testing.assert_allclose(probabilities, np.asarray(direct), atol=1e-6)
        check_probabilities(probabilities, ITEM_IDS)
        x = np_transformer_block(block, x, mask)


def test_unmasked_probabilities_are_softmax_of_full_scores():
    backbone = sasrec()
    captured = attention_probabilities(backbone, {"item_ids": ITEM_IDS}, unmasked=True)
    x = encoder_input(backbone, {"item_ids": ITEM_IDS})
    _, reference = np_self_attention(backbone.transformer_layers[0].self_attention, x, None)
    np.testing.assert_allclose(captured.latest(masked=False)[0], reference, atol=1e-5)
    assert len(captured.unmasked[0]) == len(captured.probabilities[0]) == 1
    # The masked capture still holds the causal probabilities.
    check_probabilities(captured.latest()[0], ITEM_IDS)


def test_each_call_is_recorded_and_call_restored_after_an_error():
    backbone = sasrec()
    with pytest.raises(RuntimeError, match="stop"):
        with capture_attention(backbone) as captured:
            backbone({"item_ids": ITEM_IDS})
            backbone({"item_ids": ITEM_IDS[:1]})
            raise RuntimeError("stop")
    assert [len(calls) for calls in captured.probabilities] == [2, 2]
    assert captured.probabilities[0][1].shape == (1, 2, 6, 6)
    assert all("call" not in vars(b.self_attention) for b in transformer_blocks(backbone))


class OpaqueAttention(keras.layers.Layer):
    """An attention layer that cannot return its probabilities."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = SelfAttention(8, 2)

    def build(self, shape):
        self.inner.build(shape)

    def call(self, inputs, attention_mask=None, training=None):
        return self.inner(inputs, attention_mask=attention_mask, training=training)


class TwoBlocks(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = TransformerBlock(8, 2, 16, name="plain")
        self.second = TransformerBlock(8, 2, 16, attention=OpaqueAttention(name="opaque"), name="custom")

    def call(self, x, mask):
        return self.second(self.first(x, attention_mask=mask), attention_mask=mask)


def test_layers_without_return_attention_scores_are_skipped_with_a_warning(caplog):
    layer = TwoBlocks()
    x = np.random.default_rng(0).normal(size=(2, 6, 8)).astype("float32")
    mask = attention_mask(padding_mask(ITEM_IDS))
    expected = np.asarray(layer(x, mask))
    with caplog.at_level(logging.WARNING), capture_attention(layer) as captured:
        out = np.asarray(layer(x, mask))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert captured.layer_names == ["plain/self_attention"]
    assert captured.skipped == ["custom/opaque (OpaqueAttention)"]
    assert "custom/opaque (OpaqueAttention)" in caplog.text and "return_attention_scores" in caplog.text


def test_bad_layers_raise():
    with pytest.raises(ValueError, match="holds no TransformerBlock"):
        dense = keras.layers.Dense(3)
        dense.build((None, 2))
        with capture_attention(dense):
            pass
    unbuilt = SASRecBackbone(num_items=20, max_len=6, hidden_dim=8)
    with pytest.raises(ValueError, match="build"):
        with capture_attention(unbuilt):
            pass


def test_trained_sasrec_f_capture_matches_its_attention_layers(demo_runs):
    model = load_trained(demo_runs["sasrec_f"])
    backbone = model.backbone
    examples = load_examples(demo_runs["data"], "test")
    inputs = examples.take(np.arange(8))
    captured = attention_probabilities(backbone, inputs)
    assert len(captured.latest()) == 2
    mask = attention_mask(padding_mask(inputs["item_ids"]))
    x = encoder_input(backbone, inputs)
    for block, probabilities in zip(backbone.transformer_layers, captured.latest()):
        x_next, direct = block.self_attention(x, attention_mask=mask, return_attention_scores=True)
        np.testing.assert_allclose(probabilities, np.asarray(direct), atol=1e-5)
        check_probabilities(probabilities, inputs["item_ids"])
        x = np.asarray(block(x, attention_mask=mask))
    # The side features changed the encoder input: the layer norm of item + position alone differs.
    plain = np_layer_norm(
        backbone.embeddings_layer_norm,
        np.asarray(backbone.item_embedding(inputs["item_ids"]))
        + np.asarray(backbone.position_embedding(padding_mask(inputs["item_ids"]))),
    )
    assert not np.allclose(plain, encoder_input(backbone, inputs), atol=1e-3)


class MaskRequiredAttention(SelfAttention):
    """Attention that refuses to run without a mask."""

    def call(self, query_input, attention_mask=None, return_attention_scores=False, training=None):
        if attention_mask is None:
            raise ValueError("this attention needs its mask")
        return super().call(query_input, attention_mask=attention_mask, return_attention_scores=return_attention_scores)


def test_layers_that_need_their_mask_have_no_unmasked_record(caplog):
    block = TransformerBlock(8, 2, 16, attention=MaskRequiredAttention(8, 2, name="strict"), name="block")
    x = np.random.default_rng(0).normal(size=(2, 6, 8)).astype("float32")
    mask = attention_mask(padding_mask(ITEM_IDS))
    block(x, attention_mask=mask)
    with caplog.at_level(logging.WARNING), capture_attention(block, unmasked=True) as captured:
        block(x, attention_mask=mask)
    assert "block/strict cannot run without attention mask" in caplog.text
    assert captured.latest(masked=False) == [None]
    check_probabilities(captured.latest()[0], ITEM_IDS)
    rows = attention_rank(captured.latest(), captured.latest(masked=False), REAL)
    assert "score_rank" not in rows[0] and rows[0]["probability_rank"] > 0


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registered_backbone_reports_its_attention(name):
    from helpers import INTERACTION_FEATURES, ITEM_FEATURES, RATINGS, item_feature_tables

    from tfsidefuse.data.schema import DatasetSchema, FeatureSpec
    from tfsidefuse.models.registry import build_backbone

    features = [
        FeatureSpec(f["name"], "item", "multi_categorical", max_values=f["max_values"], vocab_size=f["vocab_size"])
        for f in ITEM_FEATURES
    ]
    features += [
        FeatureSpec(f["name"], "interaction", "categorical", vocab_size=f["vocab_size"]) for f in INTERACTION_FEATURES
    ]
    schema = DatasetSchema("tiny", features=features, num_items=20, max_len=6)
    params = {"hidden_dim": 8, "num_heads": 2, "ff_dim": 16, "num_layers": 2}
    backbone = build_backbone(name, params, schema=schema, item_feature_tables=item_feature_tables())
    inputs = {"item_ids": ITEM_IDS, INTERACTION_FEATURES[0]["name"]: RATINGS}
    backbone(inputs)
    with capture_attention(backbone) as captured:
        backbone(inputs)
    assert captured.skipped == [], f"{name}: attention not captured for {captured.skipped}"
    probabilities = captured.latest()
    # Two encoder layers, and a feature tower's layers for the late-fusion models.
    assert len(probabilities) >= 2
    causal = getattr(backbone, "causal", True)
    for p in probabilities:
        check_probabilities(np.asarray(p, dtype="float64"), ITEM_IDS, causal=causal)
