"""The next-item loss: full softmax cross-entropy over the item catalogue."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

#: Reductions `NextItemCrossEntropy` supports.
REDUCTIONS = ("sum_over_batch_size", "sum", "none")


@keras.saving.register_keras_serializable(package="tfsidefuse")
class NextItemCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy of item logits against integer labels; label 0 carries no loss.

    The value of `keras.losses.SparseCategoricalCrossentropy(from_logits=True,
    ignore_class=0)` (the mean over the labelled rows; padding rows count
    for nothing) and its gradient, without Keras' masked copy of the
    `[rows, num_items]` logits: label 0 is itself a column of the logits
    (the padding item), so the fused softmax cross-entropy runs on every row
    as it is and only the per-row values are masked.

    Args:
        reduction: `"sum_over_batch_size"` (default: the mean over the rows
            whose label is not 0), `"sum"`, or `"none"` (one value per row,
            0 for label 0).
        name: name of the loss.

    Reference:
        Zhao et al., "RecBole: Towards a Unified, Comprehensive and
        Efficient Framework for Recommendation Algorithms", CIKM 2021 (its
        `CE` loss over all items, with which the papers' models train).
    """

    def __init__(
        self,
        reduction: str = "sum_over_batch_size",
        name: str = "next_item_cross_entropy",
    ) -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {REDUCTIONS}. Received: reduction={reduction!r}")
        super().__init__(name=name, reduction=reduction)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):
            labels = ops.squeeze(labels, axis=-1)
        valid = ops.not_equal(labels, 0)
        per_row = ops.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)
        per_row = ops.where(valid, per_row, 0.0)
        if self.reduction == "sum_over_batch_size":
            # The base class divides the sum by the number of rows; the mean is over the labelled ones.
            rows = ops.cast(ops.size(labels), per_row.dtype)
            per_row = per_row * ops.divide_no_nan(rows, ops.sum(ops.cast(valid, per_row.dtype)))
        return per_row

    def get_config(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "name": self.name}
