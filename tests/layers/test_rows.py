"""take_rows: ops.take of table rows, read from a TensorFlow variable without reading all of it."""

import keras
import numpy as np
import pytest

from tfsidefuse.layers.rows import take_rows

TABLE = np.arange(24, dtype="float32").reshape(6, 4)
IDS = np.array([[5, 0], [2, 2]], dtype="int32")


def test_rows_of_a_variable_and_of_a_tensor_equal_ops_take():
    want = TABLE[IDS]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(take_rows(keras.Variable(TABLE), IDS)), want)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(take_rows(keras.ops.convert_to_tensor(TABLE), IDS)), want)


@pytest.mark.tensorflow_only
def test_a_variable_is_read_by_a_sparse_gather_with_a_row_gradient():
    import tensorflow as tf

    table = keras.Variable(TABLE)

    @tf.function
    def rows(ids):
        return take_rows(table, ids)

    ops = {op.type for op in rows.get_concrete_function(tf.constant(IDS)).graph.get_operations()}
    assert "ResourceGather" in ops and "ReadVariableOp" not in ops
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(take_rows(table, IDS) * 2.0)
    gradient = tape.gradient(loss, table.value)
    assert isinstance(gradient, tf.IndexedSlices)
    dense = np.zeros_like(TABLE)
    np.add.at(dense, IDS.ravel(), 2.0)
    np.testing.assert_array_equal(tf.convert_to_tensor(gradient).numpy(), dense)
