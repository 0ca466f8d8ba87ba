import numpy as np
import pytest
from helpers import (
    ITEM_IDS,
    REAL,
    assert_dropout_only_in_training,
    hidden_inputs,
    np_attention_mask,
    np_self_attention,
    randomize_weights,
    run_layer_test,
)

from tfsidefuse.layers import SelfAttention, attention_mask, padding_mask


def test_layer_behaviors(tmp_path):
    run_layer_test(
        SelfAttention,
        init_kwargs={"hidden_dim": 8, "num_heads": 2, "dropout": 0.1},
        input_data={"query_input": hidden_inputs(), "attention_mask": np_attention_mask(ITEM_IDS)},
        expected_output_shape=(2, 6, 8),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=8,
    )


def test_layer_behaviors_with_scores_and_separate_inputs(tmp_path):
    run_layer_test(
        SelfAttention,
        init_kwargs={"hidden_dim": 8, "num_heads": 4},
        input_data={
            "query_input": hidden_inputs(),
            "key_input": hidden_inputs(width=12, seed=1),
            "value_input": hidden_inputs(width=4, seed=2),
        },
        call_kwargs={"return_attention_scores": True},
        expected_output_shape=((2, 6, 8), (2, 4, 6, 6)),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=8,
    )


@pytest.mark.parametrize("causal", [True, False])
def test_matches_numpy_reference(causal):
    layer = SelfAttention(hidden_dim=8, num_heads=2)
    x = hidden_inputs()
    mask = np.asarray(attention_mask(padding_mask(ITEM_IDS), causal=causal))
    layer(x, attention_mask=mask)
    randomize_weights(layer.weights)
    outputs, probabilities = layer(x, attention_mask=mask, return_attention_scores=True)
    expected, expected_probabilities = np_self_attention(
        layer, x.astype("float64"), np_attention_mask(ITEM_IDS, causal)
    )
    np.testing.assert_allclose(np.asarray(outputs)[REAL], expected[REAL], atol=1e-5)
    probabilities = np.asarray(probabilities).transpose(0, 2, 1, 3)  # [batch, query, head, key]
    expected_probabilities = expected_probabilities.transpose(0, 2, 1, 3)
    np.testing.assert_allclose(probabilities[REAL], expected_probabilities[REAL], atol=1e-5)
    # Real queries give exactly zero probability to disallowed keys.
    allowed = np.broadcast_to(np_attention_mask(ITEM_IDS, causal)[:, :, None, :], probabilities.shape)
    assert np.all(probabilities[REAL][~allowed[REAL]] == 0.0)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-6)


def test_separate_query_key_value_inputs_match_numpy_reference():
    layer = SelfAttention(hidden_dim=8, num_heads=2)
    query, key, value = hidden_inputs(), hidden_inputs(width=12, seed=1), hidden_inputs(width=4, seed=2)
    mask = np_attention_mask(ITEM_IDS)
    layer(query, attention_mask=mask, key_input=key, value_input=value)
    randomize_weights(layer.weights)
    outputs = layer(query, attention_mask=mask, key_input=key, value_input=value)
    expected, _ = np_self_attention(
        layer, query.astype("float64"), mask, key.astype("float64"), value.astype("float64")
    )
    np.testing.assert_allclose(np.asarray(outputs)[REAL], expected[REAL], atol=1e-5)
    assert tuple(layer.key_dense.kernel.shape) == (12, 8)
    assert tuple(layer.value_dense.kernel.shape) == (4, 8)


def test_values_default_to_keys():
    layer = SelfAttention(hidden_dim=8, num_heads=2)
    query, key = hidden_inputs(), hidden_inputs(seed=3)
    mask = np_attention_mask(ITEM_IDS)
    layer(query, attention_mask=mask, key_input=key)
    randomize_weights(layer.weights)
    expected, _ = np_self_attention(layer, query.astype("float64"), mask, key.astype("float64"))
    np.testing.assert_allclose(
        np.asarray(layer(query, attention_mask=mask, key_input=key))[REAL], expected[REAL], atol=1e-5
    )
    np.testing.assert_allclose(
        layer(query, attention_mask=mask, key_input=key),
        layer(query, attention_mask=mask, key_input=key, value_input=key),
    )


def test_no_mask_attends_everything():
    layer = SelfAttention(hidden_dim=8, num_heads=2)
    x = hidden_inputs()
    layer(x)
    randomize_weights(layer.weights)
    expected, _ = np_self_attention(layer, x.astype("float64"))
    np.testing.assert_allclose(layer(x), expected, atol=1e-5)


def test_dropout_only_in_training():
    layer = SelfAttention(hidden_dim=8, num_heads=2, dropout=0.5)
    assert_dropout_only_in_training(layer, hidden_inputs(), attention_mask=np_attention_mask(ITEM_IDS))


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"hidden_dim": 10, "num_heads": 3}, "num_heads=3"),
        ({"hidden_dim": 0, "num_heads": 1}, "hidden_dim=0"),
        ({"hidden_dim": 8, "num_heads": 0}, "num_heads=0"),
        ({"hidden_dim": 8, "num_heads": 2, "dropout": 1.5}, "1.5"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        SelfAttention(**kwargs)
