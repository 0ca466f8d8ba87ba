import numpy as np
import pytest
from helpers import gradients, run_layer_test

from tfsidefuse.layers import SideFeatureEmbedding

# [batch=1, seq_len=4, m=3]: all padding, one value, two values, three values.
MULTI_IDS = np.array([[[0, 0, 0], [2, 0, 0], [2, 3, 0], [3, 4, 2]]], dtype="int32")
# Row v of the table is a known vector, so pooled values can be written by hand.
TABLE = np.array(
    [
        [9.0, 9.0],  # padding: never used
        [7.0, 7.0],  # OOV
        [1.0, -2.0],
        [3.0, 0.5],
        [-1.0, 4.0],
    ],
    dtype="float32",
)


def _layer(pooling: str) -> SideFeatureEmbedding:
    layer = SideFeatureEmbedding(vocab_size=5, embedding_dim=2, pooling=pooling)
    layer.build()
    layer.embeddings.assign(TABLE)
    return layer


@pytest.mark.parametrize("pooling", ["sum", "mean", "max"])
def test_layer_behaviors_multi_valued(pooling, tmp_path):
    run_layer_test(
        SideFeatureEmbedding,
        init_kwargs={"vocab_size": 20, "embedding_dim": 8, "pooling": pooling},
        input_data=np.random.default_rng(0).integers(0, 20, size=(2, 6, 3)).astype("int32"),
        expected_output_shape=(2, 6, 8),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=1,
    )


def test_layer_behaviors_single_valued(tmp_path):
    run_layer_test(
        SideFeatureEmbedding,
        init_kwargs={"vocab_size": 20, "embedding_dim": 8},
        input_data=np.array([[0, 0, 3, 4, 1, 19], [2, 3, 4, 5, 6, 7]], dtype="int32"),
        expected_output_shape=(2, 6, 8),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=1,
    )


def test_sum_pooling_values():
    expected = [[0.0, 0.0], [1.0, -2.0], [4.0, -1.5], [3.0, 2.5]]
    np.testing.assert_allclose(_layer("sum")(MULTI_IDS)[0], expected, atol=1e-6)


def test_mean_pooling_values():
    expected = [[0.0, 0.0], [1.0, -2.0], [2.0, -0.75], [1.0, 2.5 / 3]]
    np.testing.assert_allclose(_layer("mean")(MULTI_IDS)[0], expected, atol=1e-6)


def test_max_pooling_values():
    expected = [[0.0, 0.0], [1.0, -2.0], [3.0, 0.5], [3.0, 4.0]]
    np.testing.assert_allclose(_layer("max")(MULTI_IDS)[0], expected, atol=1e-6)


def test_max_pooling_ignores_padding_even_when_all_values_are_negative():
    layer = _layer("max")
    layer.embeddings.assign(-np.abs(TABLE) - 1.0)
    outputs = np.asarray(layer(np.array([[[2, 0, 0], [0, 0, 0]]])))
    np.testing.assert_allclose(outputs[0], [[-2.0, -3.0], [0.0, 0.0]])


def test_single_valued_lookup_zeroes_padding():
    outputs = np.asarray(_layer("mean")(np.array([[0, 1, 3]])))
    np.testing.assert_allclose(outputs[0], [[0.0, 0.0], [7.0, 7.0], [3.0, 0.5]])


def test_single_value_pooled_equals_lookup():
    for pooling in ("sum", "mean", "max"):
        layer = _layer(pooling)
        ids = np.array([[0, 2, 4, 3]])
        np.testing.assert_allclose(layer(ids[..., None]), layer(ids), atol=1e-6)


def test_padding_gets_no_gradient():
    import keras

    layer = _layer("mean")
    layer(MULTI_IDS)
    (gradient,) = gradients([layer.embeddings], lambda: keras.ops.sum(layer(MULTI_IDS) ** 2))
    np.testing.assert_array_equal(gradient[0], [0.0, 0.0])
    assert np.all(np.asarray(gradient[2:]) != 0)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"vocab_size": 0, "embedding_dim": 8}, "0"),
        ({"vocab_size": 10, "embedding_dim": -3}, "-3"),
        ({"vocab_size": 10, "embedding_dim": 8, "pooling": "median"}, "median"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        SideFeatureEmbedding(**kwargs)
