import numpy as np
import pytest
from helpers import run_layer_test

from tfsidefuse.layers import PositionEmbedding


def test_layer_behaviors(tmp_path):
    run_layer_test(
        PositionEmbedding,
        init_kwargs={"max_len": 10, "hidden_dim": 8},
        input_data=np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=bool),
        expected_output_shape=(2, 6, 8),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=1,
    )


def test_positions_count_from_the_oldest_real_item():
    layer = PositionEmbedding(max_len=10, hidden_dim=8)
    mask = np.array([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=bool)
    outputs = np.asarray(layer(mask))
    table = np.asarray(layer.embeddings)
    np.testing.assert_allclose(outputs[0, 3:], table[0:3])
    np.testing.assert_allclose(outputs[1], table[0:6])


def test_newest_first_counts_back_from_the_latest_item():
    layer = PositionEmbedding(max_len=10, hidden_dim=8, order="newest_first")
    mask = np.array([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(layer.position_ids(mask), [[2, 2, 2, 2, 1, 0], [5, 4, 3, 2, 1, 0]])
    outputs = np.asarray(layer(mask))
    table = np.asarray(layer.embeddings)
    np.testing.assert_allclose(outputs[0, 3:], table[[2, 1, 0]])
    np.testing.assert_allclose(outputs[1], table[[5, 4, 3, 2, 1, 0]])


def test_newest_first_is_clipped_to_max_len():
    layer = PositionEmbedding(max_len=4, hidden_dim=8, order="newest_first")
    np.testing.assert_array_equal(layer.position_ids(np.ones((1, 6), dtype=bool)), [[3, 3, 3, 2, 1, 0]])


def test_order_round_trip():
    layer = PositionEmbedding(max_len=4, hidden_dim=8, order="newest_first")
    assert PositionEmbedding.from_config(layer.get_config()).order == "newest_first"
    assert PositionEmbedding(max_len=4, hidden_dim=8).get_config()["order"] == "oldest_first"


@pytest.mark.parametrize("order", ["oldest_first", "newest_first"])
def test_padding_invariance(order):
    layer = PositionEmbedding(max_len=10, hidden_dim=8, order=order)
    real = np.ones((1, 5), dtype=bool)
    padded = np.concatenate([np.zeros((1, 3), dtype=bool), real], axis=1)
    np.testing.assert_allclose(np.asarray(layer(padded))[:, 3:], np.asarray(layer(real)))


def test_positions_are_clipped_to_max_len():
    layer = PositionEmbedding(max_len=4, hidden_dim=8)
    outputs = np.asarray(layer(np.ones((1, 6), dtype=bool)))
    table = np.asarray(layer.embeddings)
    np.testing.assert_allclose(outputs[0], table[[0, 1, 2, 3, 3, 3]])


@pytest.mark.parametrize("kwargs", [{"max_len": 0, "hidden_dim": 8}, {"max_len": 5, "hidden_dim": -2}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match=str(min(kwargs.values()))):
        PositionEmbedding(**kwargs)


def test_unknown_order_is_rejected():
    with pytest.raises(ValueError, match="order='reversed'"):
        PositionEmbedding(max_len=4, hidden_dim=8, order="reversed")
