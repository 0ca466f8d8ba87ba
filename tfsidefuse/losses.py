"""The next-item loss: full softmax cross-entropy over the item catalogue."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfsidefuse import replicas

#: Reductions `NextItemCrossEntropy` supports.
REDUCTIONS = ("sum_over_batch_size", "sum", "none")


def softmax_cross_entropy(labels: Any, logits: Any) -> Any:
    """Softmax cross-entropy of `logits [..., num_classes]` against integer `labels [...]`, one value per row.

    `logsumexp(z) - z[y]`, stable for large logits (the row maximum is
    subtracted before the exponential), with the gradient
    `(softmax(z) - onehot(y)) * upstream` computed from the exponentials kept
    by the forward pass. Labels must lie in `[0, num_classes)`.

    Args:
        labels: integer tensor `[...]`.
        logits: float tensor `[..., num_classes]`.

    Returns:
        float tensor `[...]`, the per-row cross-entropy.
    """
    labels = ops.cast(labels, "int32")
    if keras.backend.backend() != "tensorflow":
        # XLA (JAX) fuses the passes over the logits by itself.
        return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    num_classes = ops.shape(logits)[-1]
    flat_labels = ops.reshape(labels, (-1,))
    label_index = ops.stack([ops.arange(ops.shape(flat_labels)[0], dtype="int32"), flat_labels], axis=1)

    @ops.custom_gradient
    def cross_entropy(z: Any) -> Any:
        top = ops.max(z, axis=-1, keepdims=True)
        exp = ops.exp(z - top)
        total = ops.sum(exp, axis=-1)
        target = ops.take_along_axis(z, flat_labels[:, None], axis=-1)[:, 0]

        def grad(*args: Any, upstream: Any = None) -> Any:
            if upstream is None:
                (upstream,) = args
            scaled = exp * ops.expand_dims(upstream / total, axis=-1)
            return ops.scatter_update(scaled, label_index, -upstream, reduction="add")

        return ops.log(total) + top[:, 0] - target, grad

    per_row = cross_entropy(ops.reshape(logits, (-1, num_classes)))
    return ops.reshape(per_row, ops.shape(labels))


@keras.saving.register_keras_serializable(package="tfsidefuse")
class NextItemCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy of item logits against integer labels; label 0 carries no loss.

    The value of `keras.losses.SparseCategoricalCrossentropy(from_logits=True,
    ignore_class=0)` (the mean over the labelled rows; padding rows count
    for nothing) and its gradient, without Keras' masked copy of the
    `[rows, num_items]` logits: label 0 is itself a column of the logits
    (the padding item), so the cross-entropy runs on every row as it is and
    only the per-row values are masked.

    The per-row value `log sum_j exp(z_j) - z_y` is computed with an explicit
    gradient, `softmax(z) - onehot(y)` times the upstream gradient: the
    forward pass keeps `exp(z - max z)` and the backward pass only rescales
    it and subtracts at the label, instead of recomputing the softmax
    (TensorFlow's fused sparse cross-entropy, and automatic differentiation
    of a log-softmax, each take several more passes over the
    `[rows, num_items]` logits, the largest tensor of a next-item step). On
    other backends Keras' own sparse cross-entropy is used (XLA fuses it).

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
        per_row = softmax_cross_entropy(labels, y_pred)
        per_row = ops.where(valid, per_row, 0.0)
        if self.reduction == "sum_over_batch_size":
            # The base class divides the sum by the number of rows (and, under tf.distribute, by the number of
            # replicas); the mean is over the labelled rows of the whole global batch, whatever each replica holds.
            rows = ops.cast(ops.size(labels), per_row.dtype)
            labelled = replicas.replica_sum(ops.sum(ops.cast(valid, per_row.dtype)))
            per_row = per_row * ops.divide_no_nan(rows * replicas.num_replicas(), labelled)
        return per_row

    def get_config(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "name": self.name}
