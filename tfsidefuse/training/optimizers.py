"""Adam whose sparse updates touch only the rows that have a gradient, for large item tables."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfsidefuse.layers.rows import take_rows


@keras.saving.register_keras_serializable(package="tfsidefuse")
class LazyAdam(keras.optimizers.Adam):
    """Adam (or AdamW) that updates only the rows of a table that a step gathered.

    Keras' `Adam` turns the gradient of an embedding lookup (a
    `tf.IndexedSlices`: the gathered rows and their gradients) into a dense
    update of the whole table and of its two moment slots at every step, so
    the cost of a step grows with the catalogue even when the loss only
    touches a few thousand items (sampled softmax). `LazyAdam` applies that
    gradient to the gathered rows only: for each row `r` with a gradient
    (`g_r`, the sum over the row's occurrences in the batch),

    `m_r <- b1 m_r + (1 - b1) g_r`,
    `v_r <- b2 v_r + (1 - b2) g_r^2`,
    `w_r <- w_r - lr wd w_r - lr sqrt(1 - b2^t) / (1 - b1^t) m_r / (sqrt(v_r) + eps)`,

    with `t` the global step, as Adam; the other rows and their moments are
    left as they are (Adam would keep moving them with their momentum and, with
    weight decay, shrink them). A step in which every row has a gradient is
    exactly Adam's step. Dense gradients (every variable under the JAX backend,
    kernels and biases under TensorFlow, and a table scored against the whole
    catalogue) take Adam's update unchanged, with the decoupled weight decay of
    `keras.optimizers.AdamW` where `weight_decay` is set and the variable is not
    excluded (`exclude_from_weight_decay`).

    The moving average of the weights (`use_ema`) is still updated densely
    after every step.

    Args:
        learning_rate: as `keras.optimizers.Adam`.
        beta_1: as `keras.optimizers.Adam`.
        beta_2: as `keras.optimizers.Adam`.
        epsilon: as `keras.optimizers.Adam`.
        amsgrad: must be `False` (the running maximum of `v` is not kept
            row-wise).
        weight_decay: decoupled weight decay, applied to the updated rows of a
            sparse update and to the whole variable of a dense one; `None` or 0
            for none.
        **kwargs: the other `keras.optimizers.Optimizer` arguments (`name`,
            `use_ema`, `ema_momentum`, clipping, ...).

    Reference:
        Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015;
        Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.

    Example:
    ```python
    optimizer = LazyAdam(learning_rate=1e-3)
    model.compile(optimizer=optimizer)
    ```
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        weight_decay: float | None = None,
        name: str = "lazy_adam",
        **kwargs: Any,
    ) -> None:
        if amsgrad:
            raise ValueError("LazyAdam does not support `amsgrad=True`; use keras.optimizers.Adam for it")
        if weight_decay is not None and (
            isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0
        ):
            raise ValueError(f"`weight_decay` must be a number >= 0 or None. Received: weight_decay={weight_decay!r}")
        # Keras' own decay step would shrink every row of a table at every step: the decay is applied here instead,
        # in `update_step`, to the rows that are updated.
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=False,
            weight_decay=None,
            name=name,
            **kwargs,
        )
        self.decoupled_weight_decay = float(weight_decay) if weight_decay else None

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        decay = self.decoupled_weight_decay if self.decoupled_weight_decay and self._use_weight_decay(variable) else 0.0
        rows = _sparse_rows(gradient)
        if rows is None:
            if decay:
                lr = ops.cast(learning_rate, variable.dtype)
                self.assign_sub(variable, ops.multiply(variable, lr * decay))
            super().update_step(gradient, variable, learning_rate)
            return
        indices, values = rows
        lr = ops.cast(learning_rate, variable.dtype)
        values = ops.cast(values, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, variable.dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, variable.dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        m_rows = take_rows(m, indices)
        v_rows = take_rows(v, indices)
        m_rows = m_rows + (values - m_rows) * (1 - self.beta_1)
        v_rows = v_rows + (ops.square(values) - v_rows) * (1 - self.beta_2)
        w_rows = take_rows(variable, indices)
        if decay:
            w_rows = w_rows - w_rows * (lr * decay)
        w_rows = w_rows - m_rows * alpha / (ops.sqrt(v_rows) + self.epsilon)
        self.assign(m, _slices(m_rows, indices))
        self.assign(v, _slices(v_rows, indices))
        self.assign(variable, _slices(w_rows, indices))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["weight_decay"] = self.decoupled_weight_decay
        config.pop("amsgrad", None)
        return config


def _sparse_rows(gradient: Any) -> tuple[Any, Any] | None:
    """`(unique row indices, summed row gradients)` of a `tf.IndexedSlices` gradient, `None` for a dense one."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not isinstance(gradient, tf.IndexedSlices):
        return None
    # A row gathered several times in a step (an item in several sequences, or as a target and a negative) has the
    # sum of its gradients, as in the dense gradient.
    indices, positions = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(indices)[0])
    return indices, values


def _slices(rows: Any, indices: Any) -> Any:
    """New values for the given rows: the optimizer's `assign` writes them with a scatter update."""
    import tensorflow as tf

    return tf.IndexedSlices(rows, indices)
