"""Reading rows of an embedding table without reading the whole table."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def take_rows(table: Any, ids: Any) -> Any:
    """The rows `ids` of a `[rows, d]` table (a variable or a tensor): `ops.take(table, ids, axis=0)`.

    Under the TensorFlow backend the rows of a variable are gathered from the
    variable itself (`tf.gather` on it: a sparse read of those rows) instead of
    from a full read of it, which is what `ops.take` does. Once a variable has
    been updated row by row (`tfsidefuse.LazyAdam`'s scatter updates),
    TensorFlow copies the whole variable at every full read, so a step that
    read a 10^6-row table in full would copy it several times. Other backends,
    and tensors, take `ops.take`. The gradient is the same (the rows' gradients).
    """
    if keras.backend.backend() == "tensorflow" and isinstance(table, keras.Variable):
        value = table.value
        import tensorflow as tf

        if isinstance(value, tf.Variable):  # not an autocast copy (mixed precision)
            return tf.gather(value, ops.cast(ids, "int32"))
    return ops.take(table, ids, axis=0)
