import keras
import numpy as np
import pytest
from helpers import run_layer_test

from tfsidefuse.layers import ItemEmbedding

IDS = np.array([[0, 0, 2, 5, 7, 19], [3, 4, 5, 6, 2, 1]], dtype="int32")


def test_layer_behaviors_lookup(tmp_path):
    run_layer_test(
        ItemEmbedding,
        init_kwargs={"num_items": 20, "hidden_dim": 8},
        input_data=IDS,
        expected_output_shape=(2, 6, 8),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=1,
    )


def test_layer_behaviors_reverse(tmp_path):
    run_layer_test(
        ItemEmbedding,
        init_kwargs={"num_items": 20, "hidden_dim": 8},
        input_data=np.random.default_rng(0).normal(size=(2, 6, 8)).astype("float32"),
        call_kwargs={"reverse": True},
        expected_output_shape=(2, 6, 20),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=1,
        expected_mixed_precision_dtype="float32",
    )


def test_lookup_and_reverse_values():
    keras.utils.set_random_seed(0)
    layer = ItemEmbedding(num_items=20, hidden_dim=8)
    vectors = np.asarray(layer(IDS))
    table = np.asarray(layer.embeddings)
    np.testing.assert_allclose(vectors, table[IDS])
    hidden = np.random.default_rng(1).normal(size=(2, 8)).astype("float32")
    logits = layer(hidden, reverse=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    np.testing.assert_allclose(logits, hidden @ table.T, atol=1e-6)


def test_default_initializer_is_recbole_normal():
    keras.utils.set_random_seed(0)
    layer = ItemEmbedding(num_items=4000, hidden_dim=16)
    layer.build()
    table = np.asarray(layer.embeddings)
    assert abs(table.mean()) < 1e-3
    assert abs(table.std() - 0.02) < 1e-3
    # Row 0 is an ordinary random row, as RecBole's padding row.
    assert np.any(table[0] != 0)


def test_shared_unseeded_initializer_gives_different_tables():
    initializer = keras.initializers.RandomNormal(stddev=0.02)
    first = ItemEmbedding(10, 4, embeddings_initializer=initializer)
    second = ItemEmbedding(10, 4, embeddings_initializer=initializer)
    first.build()
    second.build()
    assert not np.allclose(first.embeddings, second.embeddings)


@pytest.mark.parametrize("kwargs", [{"num_items": 0, "hidden_dim": 8}, {"num_items": 10, "hidden_dim": -1}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match=str(min(kwargs.values()))):
        ItemEmbedding(**kwargs)
