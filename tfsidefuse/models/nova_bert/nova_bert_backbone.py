"""NOVA-BERT: non-invasive fusion of side information into a bidirectional Cloze encoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from tfsidefuse.layers.mask_token_embedding import MaskTokenEmbedding, without_mask_token
from tfsidefuse.models.nova.nova_backbone import NOVABackbone


@keras.saving.register_keras_serializable(package="tfsidefuse")
class NOVABERTBackbone(NOVABackbone):
    """NOVA-BERT: NOVA layers with bidirectional attention and a `[MASK]` token.

    NOVA's two streams (docs/models.md#nova, see `NOVABackbone`): every layer `l`
    fuses the item stream with the fixed side-information set `S` for
    queries and keys only,

    `R^l = F^(l)(R^l_ID, a_1, .., a_p, b_1, .., b_q, P)`,
    `Q = R^l W^Q`, `K = R^l W^K`, `V = R^l_ID W^V`,

    with the bidirectional mask of BERT4Rec (`allowed(i, j) = [s_j != 0]`)
    and the Cloze vocabulary of docs/models.md#bert4rec: the id `num_items` is
    `[MASK]`. At a `[MASK]` slot the item stream starts from a learned vector
    `m` (the `[MASK]` row of the item table), each item attribute embedding
    `a_{j,t}` is a learned `[MASK]` vector `m_j` (`side_mask_token=True`) or
    zero, so the attributes of the item to predict stay hidden, while the
    behaviour features (interaction features, position) are kept: the model
    decides which the `[MASK]` slot carries (`MaskedItemModel` keeps them at
    masked slots and gives the appended `[MASK]` the OOV id). `item_table()`
    is the pure `E_item` (`num_items` rows). Train it with `MaskedItemModel`
    (class attribute `task = "cloze"`).

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1; `num_items` itself is the `[MASK]` id.
        max_len: number of learned positions (the longest window, `[MASK]`
            slot included).
        item_features: item-level features, a list of dicts
            `{"name", "vocab_size", "max_values"}`; their tables are
            assigned with `set_item_feature_tables`.
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
        fusion: `"add"`, `"concat"` or `"gate"`, the fusion function `F`.
        gate_scorer: `"linear"` (NOVA) or `"mlp"`, the scorer of `"gate"`.
        pooling: `"sum"`, `"mean"` or `"max"`, pooling of multi-valued item
            features.
        position_in_value_stream: add the position embedding to the item
            stream instead of fusing it into queries and keys only.
        side_mask_token: a learned `[MASK]` embedding per item feature at
            `[MASK]` slots; `False` gives the zero vector there.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"`, int `[batch, seq_len]` left-padded
            with 0, ids in `[0, num_items]`, and one int `[batch, seq_len]`
            entry per interaction feature, keyed by its name.
        training: bool, whether dropout is active.

    Returns:
        `{"sequence_output": hidden states [batch, seq_len, hidden_dim]}`.

    Example:

    ```python
    backbone = NOVABERTBackbone(
        num_items=1000,
        item_features=[{"name": "categories", "vocab_size": 60, "max_values": 4}],
        fusion="gate",
    )
    backbone.set_item_feature_tables({"categories": categories_table})  # [1000, 4] ints
    hidden = backbone({"item_ids": np.array([[0, 17, 5, 1000]])})["sequence_output"]  # slot 3 is [MASK]
    model = MaskedItemModel(backbone, mask_prob=0.6)
    ```

    Reference:
        Liu et al., "Non-invasive Self-attention for Side Information Fusion
        in Sequential Recommendation", AAAI 2021; Sun et al., "BERT4Rec:
        Sequential Recommendation with Bidirectional Encoder Representations
        from Transformer", CIKM 2019.
    """

    #: Trained by `MaskedItemModel`.
    task = "cloze"
    causal = False

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
        side_mask_token: bool = True,
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
            fusion=fusion,
            gate_scorer=gate_scorer,
            pooling=pooling,
            position_in_value_stream=position_in_value_stream,
            **kwargs,
        )
        if not isinstance(side_mask_token, bool):
            raise ValueError(f"`side_mask_token` must be a bool. Received: side_mask_token={side_mask_token!r}")
        self.side_mask_token = side_mask_token

    @property
    def mask_token_id(self) -> int:
        """The id of the `[MASK]` token: `num_items`."""
        return self.num_items

    def build(self, inputs_shape: Any = None) -> None:
        super().build(inputs_shape)
        self.mask_token_embedding = MaskTokenEmbedding(
            self.mask_token_id, self.hidden_dim, dtype=self.dtype_policy, name="mask_token_embedding"
        )
        self.mask_token_embedding.build()
        self.side_mask_embeddings = []
        if self.side_mask_token:
            for feature in self.item_features:
                embedding = MaskTokenEmbedding(
                    self.mask_token_id, self.hidden_dim, dtype=self.dtype_policy, name=f"{feature['name']}_mask"
                )
                embedding.build()
                self.side_mask_embeddings.append(embedding)
        self.built = True

    def item_stream_embeddings(self, inputs: dict[str, Any], padding_mask: Any) -> Any:
        ids = inputs["item_ids"]
        items = self.mask_token_embedding(self.item_embedding(without_mask_token(ids, self.mask_token_id)), ids)
        if self.position_in_value_stream:
            return items + self.position_embedding(padding_mask)
        return items

    def side_information(self, inputs: dict[str, Any], padding_mask: Any) -> list[Any]:
        ids = inputs["item_ids"]
        # The [MASK] id has no attributes: it is looked up as padding (zero embeddings), then given `m_j`.
        side = super().side_information(
            {**inputs, "item_ids": without_mask_token(ids, self.mask_token_id)}, padding_mask
        )
        # Item features come first in `S`.
        for index, embedding in enumerate(self.side_mask_embeddings):
            side[index] = embedding(side[index], ids)
        return side

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"side_mask_token": self.side_mask_token})
        return config
