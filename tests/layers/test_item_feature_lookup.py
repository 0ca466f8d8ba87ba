import keras
import numpy as np
import pytest
from helpers import run_layer_test

from tfsidefuse.layers import ItemFeatureLookup

TABLE = np.array([[0, 0], [0, 0], [3, 5], [4, 0], [6, 7]], dtype="int64")


def test_layer_behaviors(tmp_path):
    run_layer_test(
        ItemFeatureLookup,
        init_kwargs={"num_items": 20, "num_values": 3},
        input_data=np.array([[0, 0, 2, 5, 7, 19], [3, 4, 5, 6, 2, 1]], dtype="int32"),
        expected_output_shape=(2, 6, 3),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=1,
    )


def test_lookup_values():
    layer = ItemFeatureLookup(num_items=5, num_values=2)
    layer.set_table(TABLE)
    outputs = layer(np.array([[0, 2, 3], [4, 1, 2]]))
    assert keras.backend.standardize_dtype(outputs.dtype) == "int32"
    np.testing.assert_array_equal(outputs, TABLE[[[0, 2, 3], [4, 1, 2]]])


def test_table_is_saved_with_the_weights(tmp_path):
    item_ids = keras.Input(shape=(None,), dtype="int32")
    layer = ItemFeatureLookup(num_items=5, num_values=2)
    model = keras.Model(item_ids, layer(item_ids))
    layer.set_table(TABLE)
    assert "table" not in str(layer.get_config())
    path = str(tmp_path / "lookup.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(restored(np.array([[4, 3, 2]])), [[[6, 7], [4, 0], [3, 5]]])


@pytest.mark.parametrize(
    "table, message",
    [
        (np.zeros((4, 2), dtype="int32"), r"\(4, 2\)"),
        (np.zeros((5, 2), dtype="float32"), "float32"),
        (np.where(TABLE == 7, -1, TABLE), "-1"),
        (np.where(np.arange(5)[:, None] == 0, 3, TABLE), "padding item"),
    ],
)
def test_set_table_validates(table, message):
    layer = ItemFeatureLookup(num_items=5, num_values=2)
    with pytest.raises(ValueError, match=message):
        layer.set_table(table)


@pytest.mark.parametrize("kwargs", [{"num_items": 0, "num_values": 2}, {"num_items": 5, "num_values": -1}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match=str(min(kwargs.values()))):
        ItemFeatureLookup(**kwargs)
