import keras
import numpy as np
import pytest
from helpers import (
    ITEM_IDS,
    REAL,
    assert_dropout_only_in_training,
    hidden_inputs,
    np_attention_mask,
    np_transformer_block,
    randomize_weights,
    run_layer_test,
)

from tfsidefuse.layers import SelfAttention, TransformerBlock

INIT_KWARGS = {"hidden_dim": 8, "num_heads": 2, "ff_dim": 16}


def test_layer_behaviors(tmp_path):
    run_layer_test(
        TransformerBlock,
        init_kwargs={**INIT_KWARGS, "dropout": 0.1, "attention_dropout": 0.2, "layer_norm_epsilon": 1e-6},
        input_data={"inputs": hidden_inputs(), "attention_mask": np_attention_mask(ITEM_IDS)},
        expected_output_shape=(2, 6, 8),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=16,
    )


def test_layer_behaviors_with_separate_keys_and_values(tmp_path):
    run_layer_test(
        TransformerBlock,
        init_kwargs=INIT_KWARGS,
        input_data={
            "inputs": hidden_inputs(),
            "key_input": hidden_inputs(width=12, seed=1),
            "value_input": hidden_inputs(seed=2),
        },
        expected_output_shape=(2, 6, 8),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=16,
    )


def _randomized_block(causal: bool):
    """A built block with random weights, its inputs and mask."""
    block = TransformerBlock(**INIT_KWARGS)
    x = hidden_inputs()
    mask = np_attention_mask(ITEM_IDS, causal=causal)
    block(x, attention_mask=mask)
    randomize_weights(block.weights)
    return block, x, mask


@pytest.mark.parametrize("causal", [True, False])
def test_matches_numpy_reference(causal):
    block, x, mask = _randomized_block(causal)
    expected = np_transformer_block(block, x.astype("float64"), mask)
    np.testing.assert_allclose(np.asarray(block(x, attention_mask=mask))[REAL], expected[REAL], atol=1e-5)


def test_separate_keys_and_values_match_numpy_reference():
    block = TransformerBlock(**INIT_KWARGS)
    x, key, value = hidden_inputs(), hidden_inputs(width=12, seed=1), hidden_inputs(seed=2)
    mask = np_attention_mask(ITEM_IDS)
    block(x, attention_mask=mask, key_input=key, value_input=value)
    randomize_weights(block.weights)
    expected = np_transformer_block(block, x.astype("float64"), mask, key.astype("float64"), value.astype("float64"))
    outputs = block(x, attention_mask=mask, key_input=key, value_input=value)
    np.testing.assert_allclose(np.asarray(outputs)[REAL], expected[REAL], atol=1e-5)


@keras.saving.register_keras_serializable(package="tfsidefuse_tests")
class GatedIdentityAttention(keras.layers.Layer):
    """A stand-in attention variant: `gate * W x`, with an extra call keyword `gate`."""

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim

    def build(self, inputs_shape):
        self.kernel = self.add_weight(shape=(self.hidden_dim, self.hidden_dim), initializer="glorot_uniform")

    def call(self, inputs, attention_mask=None, gate=None, training=None):
        return gate * keras.ops.matmul(inputs, self.kernel)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}


def test_custom_attention_with_default_weights_equals_the_default_block():
    x, mask = hidden_inputs(), np_attention_mask(ITEM_IDS)
    default = TransformerBlock(**INIT_KWARGS)
    default(x, attention_mask=mask)
    randomize_weights(default.weights)
    custom = TransformerBlock(**INIT_KWARGS, attention=SelfAttention(8, 2, dropout=0.0))
    custom(x, attention_mask=mask)
    custom.set_weights(default.get_weights())
    np.testing.assert_allclose(custom(x, attention_mask=mask), default(x, attention_mask=mask), atol=1e-6)


def test_custom_attention_gets_extra_keywords_and_round_trips(tmp_path):
    block = TransformerBlock(**INIT_KWARGS, dropout=0.0, attention=GatedIdentityAttention(8))
    x = hidden_inputs()
    gate = np.full((2, 6, 1), 0.5, dtype="float32")
    y = np.asarray(block(x, gate=gate))
    # Two FF dense layers, two layer norms, plus the custom kernel.
    assert len(block.trainable_weights) == 4 + 4 + 1
    assert not np.allclose(y, np.asarray(block(x, gate=2 * gate)))
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(block))
    assert isinstance(revived.attention, GatedIdentityAttention)
    revived(x, gate=gate)
    revived.set_weights(block.get_weights())
    np.testing.assert_allclose(np.asarray(revived(x, gate=gate)), y, atol=1e-6)


def test_recbole_defaults():
    block = TransformerBlock(**INIT_KWARGS)
    block(hidden_inputs())
    assert block.dropout == 0.5 and block.attention_dropout == 0.5
    assert block.attention_layer_norm.epsilon == 1e-12
    assert block.self_attention.dropout == 0.5
    for dense in (
        block.feedforward_intermediate_dense,
        block.feedforward_output_dense,
        block.self_attention.query_dense,
    ):
        np.testing.assert_array_equal(dense.bias, 0.0)
        assert abs(float(np.std(dense.kernel)) - 0.02) < 0.01


def test_dropout_only_in_training():
    block = TransformerBlock(**INIT_KWARGS)
    assert_dropout_only_in_training(block, hidden_inputs(), attention_mask=np_attention_mask(ITEM_IDS))


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"num_heads": 3}, "num_heads=3"),
        ({"ff_dim": 0}, "ff_dim=0"),
        ({"dropout": -0.1}, "-0.1"),
        ({"attention_dropout": 1.0}, "attention_dropout=1.0"),
        ({"layer_norm_epsilon": 0.0}, "layer_norm_epsilon=0.0"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        TransformerBlock(**{**INIT_KWARGS, **kwargs})


@pytest.mark.parametrize("causal", [True, False])
def test_last_query_only_gives_the_last_slot_of_the_full_output(causal):
    block, x, mask = _randomized_block(causal)
    full = np.asarray(block(x, attention_mask=mask))
    last = np.asarray(block(x, attention_mask=mask, last_query_only=True))
    assert last.shape == (x.shape[0], 1, 8)
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-5)
    # Without a mask as well: the last query then sees every slot.
    np.testing.assert_allclose(np.asarray(block(x, last_query_only=True))[:, 0], np.asarray(block(x))[:, -1], atol=1e-5)
