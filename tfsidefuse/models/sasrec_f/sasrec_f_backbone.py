"""SASRec_F: early (invasive) fusion of side information into SASRec's input."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from tfsidefuse.layers._checks import check_choice
from tfsidefuse.layers.embedding_fusion import FUSION_MODES, GATE_SCORERS
from tfsidefuse.models.side_feature_backbone import SideFeatureBackbone


@keras.saving.register_keras_serializable(package="tfsidefuse")
class SASRecFBackbone(SideFeatureBackbone):
    """SASRec_F: side-feature embeddings fused with the item embedding before the encoder.

    At every slot `t`, the item embedding `e_id(s_t)`, the pooled attribute
    embeddings `a_{1,t}..a_{p,t}` of the item (looked up from the item
    tables held in the weights) and the interaction-feature embeddings
    `b_{1,t}..b_{q,t}`, all of width `d`, are fused by `F` (add, concat or
    gate, see `EmbeddingFusion`):

    `x_t = F(e_id(s_t), a_{1,t}, .., a_{p,t}, b_{1,t}, .., b_{q,t})`,
    `X^0 = Dropout(LN(x + P))`,

    as RecBole's `SASRecF`, where position is added after the fusion. With
    `fuse_position=True`, `P_t` is the last input of `F` instead and
    `X^0 = Dropout(LN(x))` (NOVA's invasive baseline). The encoder is
    SASRec's: `num_layers` post-LN `TransformerBlock`s with the causal mask.
    Hidden states are scored against the pure item table `E_id`, not against
    fused item representations. Padded slots have zero side embeddings (the
    padding item has no attributes, padded interaction ids are 0) and are
    masked out as keys.

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
        num_layers: number of transformer blocks.
        num_heads: attention heads per block; must divide `hidden_dim`.
        ff_dim: width of the feed-forward intermediate layer.
        dropout: dropout rate on the embeddings and the residual branches.
        attention_dropout: dropout rate on the attention probabilities.
        layer_norm_epsilon: epsilon of every layer normalization.
        fusion: `"add"`, `"concat"` (RecBole's only choice) or `"gate"`.
        gate_scorer: `"linear"` or `"mlp"`, the scorer of `"gate"` fusion.
        pooling: `"sum"`, `"mean"` or `"max"`, pooling of multi-valued item
            features.
        fuse_position: make the position embedding an input of the fusion
            instead of adding it after.
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
    backbone = SASRecFBackbone(
        num_items=1000,
        item_features=[{"name": "categories", "vocab_size": 60, "max_values": 4}],
        interaction_features=[{"name": "rating", "vocab_size": 7}],
    )
    backbone.set_item_feature_tables({"categories": categories_table})  # [1000, 4] ints
    hidden = backbone({"item_ids": np.array([[0, 17, 5]]), "rating": np.array([[0, 6, 3]])})["sequence_output"]
    model = NextItemModel(backbone)
    ```

    Reference:
        Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018;
        RecBole's `SASRecF` (Zhao et al., CIKM 2021); Liu et al.,
        "Non-invasive Self-attention for Side Information Fusion in
        Sequential Recommendation", AAAI 2021 (fusion functions).
    """

    side_embeddings_after_encoder = True

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
        fusion: str = "concat",
        gate_scorer: str = "linear",
        pooling: str = "sum",
        fuse_position: bool = False,
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
        if not isinstance(fuse_position, bool):
            raise ValueError(f"`fuse_position` must be a bool. Received: fuse_position={fuse_position!r}")
        self.fusion = fusion
        self.gate_scorer = gate_scorer
        self.fuse_position = fuse_position

    def build(self, inputs_shape: Any = None) -> None:
        super().build(inputs_shape)
        # The item embedding, one embedding per side feature, and the position when fused.
        num_fused = 1 + len(self.item_features) + len(self.interaction_features) + int(self.fuse_position)
        self.embedding_fusion = self.make_embedding_fusion(self.fusion, num_fused, "embedding_fusion", self.gate_scorer)
        self.built = True

    def input_embeddings(self, inputs: dict[str, Any], padding_mask: Any) -> Any:
        features = [self.item_embedding(inputs["item_ids"])] + self.side_embedding_list(inputs)
        position = self.position_embedding(padding_mask)
        if self.fuse_position:
            return self.embedding_fusion(features + [position])
        return self.embedding_fusion(features) + position

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "fusion": self.fusion,
                "gate_scorer": self.gate_scorer,
                "fuse_position": self.fuse_position,
            }
        )
        return config
