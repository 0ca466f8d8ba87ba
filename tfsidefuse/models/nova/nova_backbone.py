"""NOVA: non-invasive fusion of side information into the attention of a causal encoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from tfsidefuse.layers._checks import check_choice
from tfsidefuse.layers.embedding_fusion import FUSION_MODES, GATE_SCORERS
from tfsidefuse.layers.masks import attention_mask, padding_mask
from tfsidefuse.layers.non_invasive_attention import NonInvasiveAttention
from tfsidefuse.models.side_feature_backbone import SideFeatureBackbone


@keras.saving.register_keras_serializable(package="tfsidefuse")
class NOVABackbone(SideFeatureBackbone):
    """NOVA as a SASRec-style model: side information steers attention, values stay pure item ids.

    Two streams (docs/models.md#nova). The item stream starts from the pure
    item embedding, `R^0_ID = Dropout(LN(E_item[s]))`; the side-information
    set `S` holds, per slot `t`, the pooled attribute embeddings
    `a_{1,t}..a_{p,t}` of the item, the interaction-feature embeddings
    `b_{1,t}..b_{q,t}` and the position embedding `P_t`, all of width `d`.
    Every layer `l` is a post-LN `TransformerBlock` whose attention is a
    `NonInvasiveAttention` with its own fusion `F^(l)`:

    `R^l = F^(l)(R^l_ID, a_1, .., a_p, b_1, .., b_q, P)`,
    `Q = R^l W^Q`, `K = R^l W^K`, `V = R^l_ID W^V`,
    `R' = LN(R^l_ID + Dropout(Attention(Q, K, V, M) W^O))`,
    `R^{l+1}_ID = LN(R' + Dropout(FFN(R')))`,

    so the same `S` is fed to every layer and never updated, and the hidden
    states stay in the space of the item-id embeddings they are scored
    against (`item_table()`, the pure `E_item`). With
    `position_in_value_stream=True`, `P` is added to the item stream instead,
    `R^0_ID = Dropout(LN(E_item[s] + P))`, and leaves `S` (as SASRec-based
    reimplementations do).

    The attention mask `M` is `compute_attention_mask(padding_mask)`: causal
    plus key padding here (class attribute `causal = True`); a bidirectional
    variant sets `causal = False`. `item_stream_embeddings` and
    `side_information` are the hooks for a variant that changes the inputs
    of the two streams (e.g. `[MASK]` slots).

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1.
        max_len: number of learned positions (the longest window).
        item_features: item-level features, a list of dicts
            `{"name", "vocab_size", "max_values"}` (see
            `SideInformationEmbedding`); their tables are assigned with
            `set_item_feature_tables`.
        interaction_features: interaction-level features, a list of dicts
            `{"name", "vocab_size"}`, read from the inputs under their names.
        hidden_dim: width `d` of every embedding and of the hidden states.
        num_layers: number of NOVA layers.
        num_heads: attention heads per layer; must divide `hidden_dim`.
        ff_dim: width of the feed-forward intermediate layer.
        dropout: dropout rate on the item-stream embedding and the residual
            branches.
        attention_dropout: dropout rate on the attention probabilities.
        layer_norm_epsilon: epsilon of every layer normalization.
        fusion: `"add"`, `"concat"` or `"gate"`, the fusion function `F` of
            every layer.
        gate_scorer: `"linear"` (NOVA) or `"mlp"`, the scorer of `"gate"`.
        pooling: `"sum"`, `"mean"` or `"max"`, pooling of multi-valued item
            features.
        position_in_value_stream: add the position embedding to the item
            stream (values included) instead of fusing it into queries and
            keys only.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"`, int `[batch, seq_len]` left-padded
            with 0, and one int `[batch, seq_len]` entry per interaction
            feature (same padding), keyed by its name; other keys are ignored.
        training: bool, whether dropout is active.

    Returns:
        `{"sequence_output": hidden states [batch, seq_len, hidden_dim]}`.

    Example:

    ```python
    backbone = NOVABackbone(
        num_items=1000,
        item_features=[{"name": "categories", "vocab_size": 60, "max_values": 4}],
        interaction_features=[{"name": "rating", "vocab_size": 7}],
        fusion="gate",
    )
    backbone.set_item_feature_tables({"categories": categories_table})  # [1000, 4] ints
    hidden = backbone({"item_ids": np.array([[0, 17, 5]]), "rating": np.array([[0, 6, 3]])})["sequence_output"]
    model = NextItemModel(backbone)
    ```

    Reference:
        Liu et al., "Non-invasive Self-attention for Side Information Fusion
        in Sequential Recommendation", AAAI 2021; Kang & McAuley,
        "Self-Attentive Sequential Recommendation", ICDM 2018 (causal
        encoder and read-out).
    """

    def __init__(
        self,
        num_items: int,
        max_len: int = 50,
        item_features: Sequence[Mapping[str, Any]] = (),
        interaction_features: Sequence[Mapping[str, Any]] = (),
        hidden_dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        ff_dim: int = 256,
        dropout: float = 0.5,
        attention_dropout: float = 0.5,
        layer_norm_epsilon: float = 1e-12,
        fusion: str = "gate",
        gate_scorer: str = "linear",
        pooling: str = "sum",
        position_in_value_stream: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_items=num_items,
            max_len=max_len,
            item_features=item_features,
            interaction_features=interaction_features,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            ff_dim=ff_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            pooling=pooling,
            **kwargs,
        )
        check_choice("fusion", fusion, FUSION_MODES)
        check_choice("gate_scorer", gate_scorer, GATE_SCORERS)
        if not isinstance(position_in_value_stream, bool):
            raise ValueError(
                "`position_in_value_stream` must be a bool. "
                f"Received: position_in_value_stream={position_in_value_stream!r}"
            )
        self.fusion = fusion
        self.gate_scorer = gate_scorer
        self.position_in_value_stream = position_in_value_stream

    @property
    def num_side_features(self) -> int:
        """Size `m` of the side-information set `S` fed to every layer (position included unless in the values)."""
        return len(self.item_features) + len(self.interaction_features) + int(not self.position_in_value_stream)

    def block_attention(self, index: int) -> NonInvasiveAttention:
        return NonInvasiveAttention(
            self.hidden_dim,
            self.num_heads,
            self.num_side_features,
            fusion=self.fusion,
            gate_scorer=self.gate_scorer,
            dropout=self.attention_dropout,
            dtype=self.dtype_policy,
            name="non_invasive_attention",
        )

    def item_stream_embeddings(self, inputs: dict[str, Any], padding_mask: Any) -> Any:
        """`R^0_ID` before its layer norm and dropout: `E_item[s]`, plus `P` with `position_in_value_stream`.

        Args:
            inputs: the call's input dict.
            padding_mask: bool `[batch, seq_len]`, `True` at real items.

        Returns:
            `[batch, seq_len, hidden_dim]`.
        """
        items = self.item_embedding(inputs["item_ids"])
        if self.position_in_value_stream:
            return items + self.position_embedding(padding_mask)
        return items

    def side_information(self, inputs: dict[str, Any], padding_mask: Any) -> list[Any]:
        """The side-information set `S` fed to every layer, in a fixed order.

        Item features, then interaction features (declaration order), then the
        position unless it is in the value stream.

        Args:
            inputs: the call's input dict.
            padding_mask: bool `[batch, seq_len]`, `True` at real items.

        Returns:
            A list of `num_side_features` tensors `[batch, seq_len, hidden_dim]`.
        """
        features = self.side_embedding_list(inputs)
        if not self.position_in_value_stream:
            features.append(self.position_embedding(padding_mask))
        return features

    def compute_attention_mask(self, padding_mask: Any) -> Any:
        """Bool `[batch, seq_len, seq_len]`, `True` where query `i` may attend key `j` (causal when `causal`)."""
        return attention_mask(padding_mask, causal=self.causal)

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        mask = padding_mask(inputs["item_ids"])
        x = self.item_stream_embeddings(inputs, mask)
        x = self.normalize_embeddings(x, training)
        side = self.side_information(inputs, mask)
        allowed = self.compute_attention_mask(mask)
        for block in self.transformer_layers:
            x = block(x, attention_mask=allowed, side_information=side, training=training)
        return {"sequence_output": x}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "fusion": self.fusion,
                "gate_scorer": self.gate_scorer,
                "position_in_value_stream": self.position_in_value_stream,
            }
        )
        return config
