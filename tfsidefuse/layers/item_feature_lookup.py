"""Item id -> attribute ids lookup table stored in the model weights."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from tfsidefuse.data.schema import PAD_ID
from tfsidefuse.layers._checks import check_positive_int


@keras.saving.register_keras_serializable(package="tfsidefuse")
class ItemFeatureLookup(keras.layers.Layer):
    """Looks up the attribute ids of items from a table held in the weights.

    Item-level side features (brand, categories, ...) are static per item, so
    the model holds the table `T[item_id] -> (tau_1..tau_m)` and records only
    carry item ids: `call(s) = T[s]`. The table is a non-trainable int32
    weight, so it is saved and restored with the weights (not with the
    config) and a model can be built before the table is known.

    Row 0 (the padding item) must be all padding (zeros); by the schema's
    conventions the OOV item (row 1) has no known attributes either.

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1.
        num_values: number of attribute ids per item (`m`, the maximum number
            of values of a multi-valued feature; 1 for a single-valued one).
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        item_ids: int tensor of item ids, any shape `[...]`.

    Returns:
        Attribute ids `[..., num_values]`, int32.

    Example:

    ```python
    lookup = ItemFeatureLookup(num_items=4, num_values=2)
    lookup.set_table(np.array([[0, 0], [0, 0], [3, 5], [4, 0]]))
    lookup(np.array([[0, 2, 3]]))  # [[[0, 0], [3, 5], [4, 0]]]
    ```

    Reference:
        Xie et al., "Decoupled Side Information Fusion for Sequential
        Recommendation", SIGIR 2022 (item attribute tables of the official code).
    """

    def __init__(self, num_items: int, num_values: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_items", num_items)
        check_positive_int("num_values", num_values)
        self.num_items = num_items
        self.num_values = num_values

    def build(self, item_ids_shape: Any = None) -> None:
        self.table = self.add_weight(
            name="table",
            shape=(self.num_items, self.num_values),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            autocast=False,
        )
        self.built = True

    def set_table(self, table: Any) -> None:
        """Assigns the item -> attribute ids table.

        Args:
            table: integer array `[num_items, num_values]` of attribute ids,
                non-negative, with an all-zero row 0.

        Raises:
            ValueError: if the shape, dtype or values are not as above.
        """
        table = np.asarray(table)
        if table.shape != (self.num_items, self.num_values):
            raise ValueError(
                f"`table` must have shape (num_items, num_values) = {(self.num_items, self.num_values)}. "
                f"Received: table.shape={table.shape}"
            )
        if not np.issubdtype(table.dtype, np.integer):
            raise ValueError(f"`table` must hold integer ids. Received: table.dtype={table.dtype}")
        if table.size and (table.min() < 0 or table.max() > np.iinfo(np.int32).max):
            raise ValueError(f"`table` ids must lie in [0, 2**31 - 1]. Received: min={table.min()}, max={table.max()}")
        if np.any(table[0] != PAD_ID):
            raise ValueError(f"Row 0 of `table` (the padding item) must be all zeros. Received: {table[0].tolist()}")
        if not self.built:
            self.build()
        self.table.assign(table.astype("int32"))

    def call(self, item_ids: Any) -> Any:
        return ops.take(self.table, ops.cast(item_ids, "int32"), axis=0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_items": self.num_items, "num_values": self.num_values})
        return config
