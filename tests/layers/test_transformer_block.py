import keras
import numpy as np
import pytest
from helpers import np_attention_mask, np_transformer_block, run_layer_test

from tfsidefuse.layers import TransformerBlock

ITEM_IDS = np.array([[0, 0, 5, 7, 9, 3], [3, 4, 5, 6, 2, 8]], dtype="int32")
# Causal query rows at padded slots have no allowed key: their outputs are never
# read, and `score - 10000` rounds in float32, so they are not compared.
REAL = ITEM_IDS != 0
INIT_KWARGS = {"hidden_dim": 8, "num_heads": 2, "ff_dim": 16}


def _inputs(width: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, 6, width)).astype("float32")


def _randomize(layer: keras.layers.Layer) -> None:
    rng = np.random.default_rng(1)
    for w in layer.weights:
        w.assign(rng.normal(size=w.shape).astype("float32") * 0.5)


def test_layer_behaviors(tmp_path):
    run_layer_test(
        TransformerBlock,
        init_kwargs={**INIT_KWARGS, "dropout": 0.1, "attention_dropout": 0.2, "layer_norm_epsilon": 1e-6},
        input_data={"inputs": _inputs(), "attention_mask": np_attention_mask(ITEM_IDS)},
        expected_output_shape=(2, 6, 8),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=16,
    )


def test_layer_behaviors_with_separate_keys_and_values(tmp_path):
    run_layer_test(
        TransformerBlock,
        init_kwargs=INIT_KWARGS,
        input_data={"inputs": _inputs(), "key_input": _inputs(width=12, seed=1), "value_input": _inputs(seed=2)},
        expected_output_shape=(2, 6, 8),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=16,
    )


@pytest.mark.parametrize("causal", [True, False])
def test_matches_numpy_reference(causal):
    block = TransformerBlock(**INIT_KWARGS)
    x = _inputs()
    mask = np_attention_mask(ITEM_IDS, causal=causal)
    block(x, attention_mask=mask)
    _randomize(block)
    expected = np_transformer_block(block, x.astype("float64"), mask)
    np.testing.assert_allclose(np.asarray(block(x, attention_mask=mask))[REAL], expected[REAL], atol=1e-5)


def test_separate_keys_and_values_match_numpy_reference():
    block = TransformerBlock(**INIT_KWARGS)
    x, key, value = _inputs(), _inputs(width=12, seed=1), _inputs(seed=2)
    mask = np_attention_mask(ITEM_IDS)
    block(x, attention_mask=mask, key_input=key, value_input=value)
    _randomize(block)
    expected = np_transformer_block(block, x.astype("float64"), mask, key.astype("float64"), value.astype("float64"))
    outputs = block(x, attention_mask=mask, key_input=key, value_input=value)
    np.testing.assert_allclose(np.asarray(outputs)[REAL], expected[REAL], atol=1e-5)


def test_recbole_defaults():
    block = TransformerBlock(**INIT_KWARGS)
    block(_inputs())
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
    x = _inputs()
    mask = np_attention_mask(ITEM_IDS)
    inference = [np.asarray(block(x, attention_mask=mask)) for _ in range(2)]
    np.testing.assert_allclose(inference[0], inference[1])
    assert not np.allclose(block(x, attention_mask=mask, training=True), inference[0])


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
