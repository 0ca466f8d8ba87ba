"""Multi-head scaled dot-product attention with separable Q/K/V inputs."""

from __future__ import annotations

import math
from typing import Any

import keras

from tfsidefuse.layers._checks import check_positive_int, check_rate, get_initializer
from tfsidefuse.layers.attention_core import MASK_VALUE, attend, disallowed_mask, dot_product_logits, split_heads

# `MASK_VALUE` lives in `attention_core`; it stays importable from here.
__all__ = ["MASK_VALUE", "SelfAttention"]


@keras.saving.register_keras_serializable(package="tfsidefuse")
class SelfAttention(keras.layers.Layer):
    """Multi-head scaled dot-product attention (RecBole's `MultiHeadAttention`).

    With `h` heads of width `d_h = hidden_dim / h`:

    `Q = X_q W^Q + b^Q`, `K = X_k W^K + b^K`, `V = X_v W^V + b^V`, split into
    heads, then `S = Q K^T / sqrt(d_h) + M` with `M = 0` where attention is
    allowed and `-10000` elsewhere, `Pi = Dropout(softmax(S))` and
    `output = merge(Pi V) W^O + b^O`.

    `X_q` is `query_input`; `X_k` defaults to `X_q` and `X_v` to `X_k`. Keeping
    them separable lets NOVA compute queries and keys from a fused
    representation while values come from the item embeddings alone. The
    residual connection and layer normalization belong to `TransformerBlock`.

    Args:
        hidden_dim: width `d` of the projections and of the output.
        num_heads: number of heads `h`; must divide `hidden_dim`.
        dropout: dropout rate on the attention probabilities.
        kernel_initializer: initializer of the projection kernels; `None`
            gives `N(0, 0.02)`, as RecBole.
        bias_initializer: initializer of the projection biases.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        query_input: `[batch, seq_len, dim_q]`, source of the queries.
        attention_mask: optional bool `[batch, seq_len, key_len]`, `True` where
            query `i` may attend key `j` (see `tfsidefuse.layers.masks`).
            `None` allows everything.
        key_input: optional `[batch, key_len, dim_k]`, source of the keys;
            defaults to `query_input`.
        value_input: optional `[batch, key_len, dim_v]`, source of the values;
            defaults to `key_input`.
        return_attention_scores: also return the attention probabilities
            `[batch, num_heads, seq_len, key_len]` (before dropout).
        training: bool, whether dropout is active.

    Returns:
        `[batch, seq_len, hidden_dim]`, or a tuple `(output, probabilities)`
        when `return_attention_scores=True`.

    Example:

    ```python
    attention = SelfAttention(hidden_dim=8, num_heads=2)
    x = np.random.normal(size=(2, 5, 8))
    ids = np.array([[0, 0, 3, 4, 5], [2, 3, 4, 5, 6]])
    outputs = attention(x, attention_mask=masks.attention_mask(ids != 0))
    ```

    Reference:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("num_heads", num_heads)
        if hidden_dim % num_heads != 0:
            raise ValueError(
                f"`hidden_dim` must be divisible by `num_heads`. "
                f"Received: hidden_dim={hidden_dim}, num_heads={num_heads}"
            )
        check_rate("dropout", dropout)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.head_dim = hidden_dim // num_heads

    def _dense(self, name: str) -> keras.layers.Dense:
        # Serialized initializers give each kernel a fresh (unseeded) instance,
        # so the four projections do not start from identical values.
        return keras.layers.Dense(
            self.hidden_dim,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_input_shape: Any, key_input_shape: Any = None, value_input_shape: Any = None) -> None:
        key_input_shape = query_input_shape if key_input_shape is None else key_input_shape
        value_input_shape = key_input_shape if value_input_shape is None else value_input_shape
        self.query_dense = self._dense("query")
        self.query_dense.build(query_input_shape)
        self.key_dense = self._dense("key")
        self.key_dense.build(key_input_shape)
        self.value_dense = self._dense("value")
        self.value_dense.build(value_input_shape)
        self.output_dense = self._dense("attention_output")
        self.output_dense.build(tuple(query_input_shape)[:-1] + (self.hidden_dim,))
        self.probabilities_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="probabilities_dropout"
        )
        self.built = True

    def call(
        self,
        query_input: Any,
        attention_mask: Any = None,
        key_input: Any = None,
        value_input: Any = None,
        return_attention_scores: bool = False,
        training: bool | None = None,
    ) -> Any:
        key_input = query_input if key_input is None else key_input
        value_input = key_input if value_input is None else value_input
        query = split_heads(self.query_dense(query_input), self.num_heads, self.head_dim)
        key = split_heads(self.key_dense(key_input), self.num_heads, self.head_dim)
        value = split_heads(self.value_dense(value_input), self.num_heads, self.head_dim)

        # Scaled in the compute dtype, then cast to float32 for the softmax.
        scores = dot_product_logits(query, key, scale=math.sqrt(self.head_dim))
        context, probabilities = attend(
            scores,
            disallowed_mask(attention_mask),
            value,
            self.probabilities_dropout,
            training,
            self.compute_dtype,
        )
        outputs = self.output_dense(context)
        if return_attention_scores:
            return outputs, probabilities
        return outputs

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
