"""NOVA: non-invasive self-attention, side information in queries and keys only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from tfsidefuse.layers._checks import check_choice, check_heads, check_positive_int, check_rate, get_initializer
from tfsidefuse.layers.embedding_fusion import FUSION_MODES, GATE_SCORERS, EmbeddingFusion
from tfsidefuse.layers.self_attention import SelfAttention


@keras.saving.register_keras_serializable(package="tfsidefuse")
class NonInvasiveAttention(keras.layers.Layer):
    """Non-invasive multi-head self-attention (NOVA).

    The layer reads two streams: the item stream `R_ID` (`inputs`, the hidden
    states that layer after layer stay in the space of the item-id
    embeddings) and a fixed set of side-information embeddings
    `S_1..S_m` (item attributes, behaviour features, position), all
    `[batch, seq_len, d]`. Side information only steers *where* to attend:

    `R = F(R_ID, S_1, .., S_m)` (add, concat or gate, see `EmbeddingFusion`),
    `Q = R W^Q + b^Q`, `K = R W^K + b^K`, `V = R_ID W^V + b^V`,
    `output = merge(Dropout(softmax(Q K^T / sqrt(d_h) + M)) V) W^O + b^O`,

    so the output is a mixture of projected item-stream vectors and carries
    no side information itself. The layer owns its fusion `F` (one per layer,
    as NOVA's Figure 3 draws it inside every layer) and the projections
    (`SelfAttention`).

    It is meant as the `attention=` component of `TransformerBlock`, which
    calls it as `attention(R_ID, attention_mask=M, side_information=[S..],
    training=...)` and wraps it in RecBole's post-LN residual and
    feed-forward, whose residual starts from `R_ID`:
    `R' = LN(R_ID + Dropout(output))`, `R_ID^{l+1} = LN(R' + Dropout(FFN(R')))`
    (docs/models.md#nova). Residual and FFN therefore act on the item stream only,
    and the caller feeds the same `S_1..S_m` to every layer. The attention
    mask comes from the caller: causal for a SASRec-style model,
    padding-only for NOVA-BERT.

    Args:
        hidden_dim: width `d` of the item stream, of the fused
            representation and of the output.
        num_heads: number of heads `h`; must divide `hidden_dim`.
        num_side_features: number `m >= 0` of side-information tensors given
            at every call (the fusion has `m + 1` inputs, the item stream
            first).
        fusion: `"add"`, `"concat"` or `"gate"`, the fusion function `F`.
        gate_scorer: `"linear"` (NOVA) or `"mlp"`, the scorer of `"gate"`.
        dropout: dropout rate on the attention probabilities.
        kernel_initializer: initializer of every kernel; `None` gives
            `N(0, 0.02)`, as RecBole.
        bias_initializer: initializer of every bias.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: `[batch, seq_len, hidden_dim]`, the item stream `R_ID`
            (source of the values).
        side_information: list of `num_side_features` tensors
            `[batch, seq_len, d_k]`, in a fixed order; `d_k = hidden_dim`
            unless `fusion="concat"` and the layer was built with their
            shapes.
        attention_mask: optional bool `[batch, seq_len, seq_len]`, `True`
            where query `i` may attend key `j`. `None` allows everything.
        return_attention_scores: also return the attention probabilities
            `[batch, num_heads, seq_len, seq_len]` (before dropout).
        training: bool, whether dropout is active.

    Returns:
        `[batch, seq_len, hidden_dim]`, or `(output, probabilities)` when
        `return_attention_scores=True`.

    Example:

    ```python
    attention = NonInvasiveAttention(hidden_dim=8, num_heads=2, num_side_features=2, fusion="gate")
    block = TransformerBlock(hidden_dim=8, num_heads=2, ff_dim=32, attention=attention)
    ids = np.array([[0, 0, 3, 4, 5]])
    items, category, position = np.random.normal(size=(3, 1, 5, 8))
    mask = masks.attention_mask(ids != 0, causal=True)
    hidden = block(items, attention_mask=mask, side_information=[category, position])
    ```

    Reference:
        Liu et al., "Non-invasive Self-attention for Side Information Fusion
        in Sequential Recommendation", AAAI 2021 (§3.4-3.6).
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        num_side_features: int,
        fusion: str = "add",
        gate_scorer: str = "linear",
        dropout: float = 0.0,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("hidden_dim", hidden_dim, allow_bool=False)
        check_heads(num_heads, hidden_dim)
        if not isinstance(num_side_features, int) or isinstance(num_side_features, bool) or num_side_features < 0:
            raise ValueError(
                f"`num_side_features` must be a non-negative int. Received: num_side_features={num_side_features!r}"
            )
        check_choice("fusion", fusion, FUSION_MODES)
        check_choice("gate_scorer", gate_scorer, GATE_SCORERS)
        check_rate("dropout", dropout)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_side_features = num_side_features
        self.fusion = fusion
        self.gate_scorer = gate_scorer
        self.dropout = dropout
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, inputs_shape: Any, side_information_shape: Sequence[Any] | None = None) -> None:
        """Builds the fusion and the projections.

        Args:
            inputs_shape: shape of the item stream `[batch, seq_len, hidden_dim]`.
            side_information_shape: optional list of the side tensors' shapes;
                by default `num_side_features` shapes of width `hidden_dim`
                (`TransformerBlock` builds its attention from `inputs_shape`
                alone).
        """
        hidden_shape = tuple(inputs_shape)[:-1] + (self.hidden_dim,)
        if side_information_shape is None:
            side_information_shape = [hidden_shape] * self.num_side_features
        side_information_shape = [tuple(shape) for shape in side_information_shape]
        if len(side_information_shape) != self.num_side_features:
            raise ValueError(
                f"Expected one side-information shape per side feature (num_side_features={self.num_side_features}). "
                f"Received: {side_information_shape}"
            )
        initializers = {
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }
        self.embedding_fusion = EmbeddingFusion(
            self.hidden_dim,
            mode=self.fusion,
            gate_scorer=self.gate_scorer,
            dtype=self.dtype_policy,
            name="embedding_fusion",
            **initializers,
        )
        self.embedding_fusion.build([tuple(inputs_shape)] + side_information_shape)
        self.self_attention = SelfAttention(
            self.hidden_dim,
            self.num_heads,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="self_attention",
            **initializers,
        )
        # Queries and keys read the fused representation, values the item stream.
        self.self_attention.build(hidden_shape, hidden_shape, tuple(inputs_shape))
        self.built = True

    def fused_representation(self, inputs: Any, side_information: Sequence[Any]) -> Any:
        """`R = F(R_ID, S_1, .., S_m)`, the source of the queries and keys, `[batch, seq_len, hidden_dim]`."""
        side_information = list(side_information)
        if len(side_information) != self.num_side_features:
            raise ValueError(
                f"`side_information` must hold num_side_features={self.num_side_features} tensors. "
                f"Received: {len(side_information)}"
            )
        return self.embedding_fusion([inputs] + side_information)

    def call(
        self,
        inputs: Any,
        side_information: Sequence[Any] = (),
        attention_mask: Any = None,
        return_attention_scores: bool = False,
        training: bool | None = None,
    ) -> Any:
        fused = self.fused_representation(inputs, side_information)
        return self.self_attention(
            fused,
            attention_mask=attention_mask,
            key_input=fused,
            value_input=inputs,
            return_attention_scores=return_attention_scores,
            training=training,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "num_side_features": self.num_side_features,
                "fusion": self.fusion,
                "gate_scorer": self.gate_scorer,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
