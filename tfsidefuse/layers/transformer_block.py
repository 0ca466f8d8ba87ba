"""RecBole's post-LN transformer block."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfsidefuse.layers._checks import check_positive_int, check_transformer_args, get_initializer
from tfsidefuse.layers.self_attention import SelfAttention


@keras.saving.register_keras_serializable(package="tfsidefuse")
class TransformerBlock(keras.layers.Layer):
    """Post-LN transformer block, exactly as RecBole's `TransformerLayer`.

    With `H` the input and `A` the multi-head attention of `SelfAttention`
    (output projection included):

    `H' = LN_1(H + Dropout(A(H, M)))`,
    `Y = LN_2(H' + Dropout(GELU(H' W^1 + b^1) W^2 + b^2))`,

    with the exact (erf) GELU, no dropout between GELU and `W^2`, attention
    dropout on the attention probabilities and LayerNorm epsilon 1e-12 by
    default. The residual branch always starts from `inputs`, also when keys or
    values come from other tensors (`key_input`, `value_input`).

    Args:
        hidden_dim: width `d` of the block.
        num_heads: number of attention heads; must divide `hidden_dim`.
        ff_dim: width of the feed-forward intermediate layer.
        dropout: dropout rate on the two residual branches.
        attention_dropout: dropout rate on the attention probabilities.
        layer_norm_epsilon: epsilon of both layer normalizations.
        kernel_initializer: initializer of every kernel; `None` gives
            `N(0, 0.02)`, as RecBole.
        bias_initializer: initializer of every bias.
        attention: optional attention layer that replaces the default
            `SelfAttention` (a layer, or its serialized config). It is called
            as `attention(inputs, attention_mask=..., training=..., **kw)`
            with the block's extra call keywords, must return
            `[batch, seq_len, hidden_dim]` (output projection included) and
            is built with `attention.build(inputs_shape)` if unbuilt. This is
            how a model swaps in its attention variant (NOVA, decoupled,
            fused) and keeps RecBole's block around it.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: `[batch, seq_len, hidden_dim]`, the query input and residual.
        attention_mask: optional bool `[batch, seq_len, key_len]`, `True` where
            query `i` may attend key `j`. `None` allows everything.
        key_input: optional source of the keys (defaults to `inputs`).
        value_input: optional source of the values (defaults to `key_input`).
        training: bool, whether dropout is active.
        last_query_only: bool, compute the block's output at the last slot
            only, `[batch, 1, hidden_dim]`, with the keys and values of every
            slot: the same values as the last slot of the full output, for
            the last block of a next-item prediction. The default
            `SelfAttention` gets the last slot as its query input; a custom
            `attention` layer gets `last_query_only=True` and must return
            `[batch, 1, hidden_dim]` (`DecoupledAttention` does).
        return_side_outputs: bool, for an `attention` layer with side outputs
            (`FusedAttention`): pass it `return_side_outputs=True` and return
            its side outputs beside the block's output.
        **attention_kwargs: further keywords for a custom `attention` layer.

    Returns:
        `[batch, seq_len, hidden_dim]` (`[batch, 1, hidden_dim]` with
        `last_query_only`); with `return_side_outputs`, the tuple of it and
        the attention layer's side outputs.

    Example:

    ```python
    block = TransformerBlock(hidden_dim=8, num_heads=2, ff_dim=32)
    ids = np.array([[0, 0, 3, 4, 5]])
    x = np.random.normal(size=(1, 5, 8))
    y = block(x, attention_mask=masks.attention_mask(ids != 0, causal=True))
    ```

    Reference:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017;
        Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        ff_dim: int,
        dropout: float = 0.5,
        attention_dropout: float = 0.5,
        layer_norm_epsilon: float = 1e-12,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        attention: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("hidden_dim", hidden_dim)
        check_transformer_args(hidden_dim, num_heads, ff_dim, dropout, attention_dropout, layer_norm_epsilon)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        if isinstance(attention, dict):
            attention = keras.saving.deserialize_keras_object(attention)
        if attention is not None and not isinstance(attention, keras.layers.Layer):
            raise ValueError(f"`attention` must be a Keras layer, its config or None. Received: {attention!r}")
        self.attention = attention

    def _dense(self, units: int, name: str) -> keras.layers.Dense:
        # Serialized initializers give each kernel a fresh (unseeded) instance.
        return keras.layers.Dense(
            units,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def _layer_norm(self, name: str) -> keras.layers.LayerNormalization:
        return keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name)

    def build(self, inputs_shape: Any, key_input_shape: Any = None, value_input_shape: Any = None) -> None:
        hidden_shape = tuple(inputs_shape)[:-1] + (self.hidden_dim,)
        if self.attention is None:
            self.self_attention = SelfAttention(
                self.hidden_dim,
                self.num_heads,
                dropout=self.attention_dropout,
                kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                bias_initializer=keras.initializers.serialize(self.bias_initializer),
                dtype=self.dtype_policy,
                name="self_attention",
            )
            self.self_attention.build(inputs_shape, key_input_shape, value_input_shape)
        else:
            self.self_attention = self.attention
            if not self.self_attention.built:
                self.self_attention.build(inputs_shape)
        self.attention_output_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_output_dropout"
        )
        self.attention_layer_norm = self._layer_norm("attention_layer_norm")
        self.attention_layer_norm.build(hidden_shape)
        self.feedforward_intermediate_dense = self._dense(self.ff_dim, "feedforward_intermediate_dense")
        self.feedforward_intermediate_dense.build(hidden_shape)
        self.feedforward_output_dense = self._dense(self.hidden_dim, "feedforward_output_dense")
        self.feedforward_output_dense.build(tuple(inputs_shape)[:-1] + (self.ff_dim,))
        self.feedforward_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="feedforward_dropout"
        )
        self.feedforward_layer_norm = self._layer_norm("feedforward_layer_norm")
        self.feedforward_layer_norm.build(hidden_shape)
        self.built = True

    def call(
        self,
        inputs: Any,
        attention_mask: Any = None,
        key_input: Any = None,
        value_input: Any = None,
        training: bool | None = None,
        last_query_only: bool = False,
        return_side_outputs: bool = False,
        **attention_kwargs: Any,
    ) -> Any:
        if return_side_outputs:
            attention_kwargs["return_side_outputs"] = True
        if key_input is not None:
            attention_kwargs["key_input"] = key_input
        if value_input is not None:
            attention_kwargs["value_input"] = value_input
        query_input, residual = inputs, inputs
        if last_query_only:
            residual = inputs[:, -1:, :]
            if self.attention is None:
                # SelfAttention: the last slot queries the keys and values of every slot.
                attention_kwargs.setdefault("key_input", inputs)
                query_input = residual
                if attention_mask is not None:
                    attention_mask = attention_mask[:, -1:, :]
            else:
                attention_kwargs["last_query_only"] = True
        attended = self.self_attention(
            query_input, attention_mask=attention_mask, training=training, **attention_kwargs
        )
        if return_side_outputs:
            attended, side_outputs = attended
        hidden = self.attention_layer_norm(residual + self.attention_output_dropout(attended, training=training))
        intermediate = ops.gelu(self.feedforward_intermediate_dense(hidden), approximate=False)
        outputs = self.feedforward_output_dense(intermediate)
        outputs = self.feedforward_layer_norm(hidden + self.feedforward_dropout(outputs, training=training))
        if return_side_outputs:
            return outputs, side_outputs
        return outputs

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "ff_dim": self.ff_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "attention": None if self.attention is None else keras.saving.serialize_keras_object(self.attention),
            }
        )
        return config
