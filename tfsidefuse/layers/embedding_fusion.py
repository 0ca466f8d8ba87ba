"""Embedding-level fusion of per-position feature vectors: add, concat or gate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from tfsidefuse.layers._checks import check_choice, check_positive_int, get_initializer

FUSION_MODES = ("add", "concat", "gate")
GATE_SCORERS = ("linear", "mlp")


@keras.saving.register_keras_serializable(package="tfsidefuse")
class EmbeddingFusion(keras.layers.Layer):
    """Fuses `m` per-position feature vectors `f_1..f_m` into one of width `hidden_dim`.

    The embedding-level fusion functions of NOVA (§3.5) and COMIF (App. B):

    - `"add"`: `F(f_1..f_m) = sum_k f_k`; every width must be `hidden_dim`.
    - `"concat"`: `F(f_1..f_m) = [f_1 || ... || f_m] W^c + b^c`, with
      `W^c` of shape `[sum_k d_k, hidden_dim]`; widths may differ.
    - `"gate"`: `F(f_1..f_m) = sum_k g_k f_k`, `g = softmax_k(e_k)`, one
      scalar score per feature and position; every width must be
      `hidden_dim`. With `gate_scorer="linear"`, `e_k = f_k^T w^F` (NOVA,
      COMIF); with `"mlp"`, `e_k = w_2^T ReLU(W_1 f_k + b_1)`, RecBole's
      `VanillaAttention` scorer (FDSA, DIF-SR), `W_1` of shape
      `[hidden_dim, hidden_dim]`. RecBole's output bias `b_2` is the same for
      every feature, cancels in the softmax and would never receive a
      gradient, so it is left out.

    The gate's softmax is computed in float32.

    Args:
        hidden_dim: output width `d`.
        mode: `"add"`, `"concat"` or `"gate"`.
        gate_scorer: `"linear"` or `"mlp"`, the score of `"gate"` (unused by
            the other modes).
        kernel_initializer: initializer of every kernel; `None` gives
            `N(0, 0.02)`, as RecBole.
        bias_initializer: initializer of every bias.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: list of `m >= 1` float tensors `[batch, seq_len, d_k]`
            (any leading dimensions, the same for all), in a fixed order.
        width: optional int (or scalar int tensor) `w <= hidden_dim`, for
            inputs of width `hidden_dim` that are zero beyond their first `w`
            entries: the inputs are then given as those first `w` entries
            (`[..., w]`) and the result is the first `w` entries of the
            full-width fusion, computed with the matching slices of the
            weights. Exact, and cheaper when `w` is small (DIF-SR's score rows
            of length `max_len` over a shorter window). Needs every built
            width to be `hidden_dim`.

    Returns:
        `[batch, seq_len, hidden_dim]` (`[batch, seq_len, width]` with `width`).

    Example:

    ```python
    fusion = EmbeddingFusion(hidden_dim=8, mode="gate")
    item, category = np.random.normal(size=(2, 1, 5, 8))
    fused = fusion([item, category])  # [1, 5, 8]
    ```

    Reference:
        Liu et al., "Non-invasive Self-attention for Side Information Fusion
        in Sequential Recommendation", AAAI 2021 (§3.5, fusion functions);
        Zhang et al., "Feature-level Deeper Self-Attention Network for
        Sequential Recommendation", IJCAI 2019 (vanilla attention gate).
    """

    def __init__(
        self,
        hidden_dim: int,
        mode: str = "add",
        gate_scorer: str = "linear",
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("hidden_dim", hidden_dim, allow_bool=False)
        check_choice("mode", mode, FUSION_MODES)
        check_choice("gate_scorer", gate_scorer, GATE_SCORERS)
        self.hidden_dim = hidden_dim
        self.mode = mode
        self.gate_scorer = gate_scorer
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def _dense(self, units: int, name: str, use_bias: bool = True, activation: str | None = None) -> keras.layers.Dense:
        # Serialized initializers give each kernel a fresh (unseeded) instance.
        return keras.layers.Dense(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, inputs_shape: Sequence[Any]) -> None:
        if (
            not isinstance(inputs_shape, (list, tuple))
            or not inputs_shape
            or not isinstance(inputs_shape[0], (list, tuple))
        ):
            raise ValueError(
                f"`inputs` must be a non-empty list of `[batch, seq_len, d_k]` tensors. Received shapes: {inputs_shape}"
            )
        widths = [tuple(shape)[-1] for shape in inputs_shape]
        if self.mode == "concat":
            if any(width is None for width in widths):
                raise ValueError(f"`concat` fusion needs known feature widths. Received widths: {widths}")
            self.projection = self._dense(self.hidden_dim, "projection")
            self.projection.build((None, sum(widths)))
        elif any(width != self.hidden_dim for width in widths):
            raise ValueError(
                f"`{self.mode}` fusion needs every feature of width hidden_dim={self.hidden_dim}. "
                f"Received widths: {widths}"
            )
        if self.mode == "gate":
            if self.gate_scorer == "linear":
                self.gate_dense = self._dense(1, "gate_dense", use_bias=False)
                self.gate_dense.build((None, self.hidden_dim))
            else:
                self.gate_hidden_dense = self._dense(self.hidden_dim, "gate_hidden_dense", activation="relu")
                self.gate_hidden_dense.build((None, self.hidden_dim))
                self.gate_output_dense = self._dense(1, "gate_output_dense", use_bias=False)
                self.gate_output_dense.build((None, self.hidden_dim))
        self.built = True

    def call(self, inputs: Sequence[Any], width: Any = None) -> Any:
        features = list(inputs)
        if width is not None:
            return self._call_truncated(features, width)
        if self.mode == "add":
            fused = features[0]
            for feature in features[1:]:
                fused = fused + feature
            return fused
        if self.mode == "concat":
            return self.projection(ops.concatenate(features, axis=-1))
        if len(features) == 1:
            return features[0]  # the softmax over one feature is 1
        stacked = ops.stack(features, axis=-2)  # [..., m, d]
        if self.gate_scorer == "linear":
            scores = self.gate_dense(stacked)
        else:
            scores = self.gate_output_dense(self.gate_hidden_dense(stacked))
        return self._gated_sum(stacked, scores)

    @staticmethod
    def _gated_sum(stacked: Any, scores: Any) -> Any:
        """`sum_k softmax_k(e_k) f_k` of stacked features `[..., m, d]` and scores `[..., m, 1]`."""
        gates = ops.softmax(ops.cast(scores, "float32"), axis=-2)
        return ops.sum(stacked * ops.cast(gates, stacked.dtype), axis=-2)

    def _call_truncated(self, features: list[Any], width: Any) -> Any:
        """`call` on the first `width` entries of zero-extended inputs: the weights' matching slices."""
        if self.mode == "add" or (self.mode == "gate" and len(features) == 1):
            return self.call(features)
        if self.mode == "concat" and self.projection.kernel.shape[0] != len(features) * self.hidden_dim:
            raise ValueError(
                f"`width` needs every concat input of width hidden_dim={self.hidden_dim}; the projection was built "
                f"for {self.projection.kernel.shape[0]} input entries over {len(features)} inputs"
            )
        dtype = features[0].dtype

        def weight(variable: Any) -> Any:
            return ops.cast(variable, dtype)

        if self.mode == "concat":
            m = len(features)
            kernel = ops.reshape(weight(self.projection.kernel), (m, self.hidden_dim, self.hidden_dim))
            kernel = ops.reshape(kernel[:, :width, :width], (m * width, width))
            return ops.matmul(ops.concatenate(features, axis=-1), kernel) + weight(self.projection.bias)[:width]
        stacked = ops.stack(features, axis=-2)  # [..., m, width]
        if self.gate_scorer == "linear":
            scores = ops.matmul(stacked, weight(self.gate_dense.kernel)[:width])
        else:
            hidden = ops.matmul(stacked, weight(self.gate_hidden_dense.kernel)[:width])
            hidden = ops.relu(hidden + weight(self.gate_hidden_dense.bias))
            scores = ops.matmul(hidden, weight(self.gate_output_dense.kernel))
        return self._gated_sum(stacked, scores)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "mode": self.mode,
                "gate_scorer": self.gate_scorer,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
