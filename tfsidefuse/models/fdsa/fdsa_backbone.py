"""FDSA: two causal self-attention towers (items, side features) fused after encoding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from tfsidefuse.layers._checks import check_choice, check_rate
from tfsidefuse.layers.embedding_fusion import FUSION_MODES, GATE_SCORERS
from tfsidefuse.layers.masks import padding_mask
from tfsidefuse.models.side_feature_backbone import SideFeatureBackbone


@keras.saving.register_keras_serializable(package="tfsidefuse")
class FDSABackbone(SideFeatureBackbone):
    """FDSA: an item tower and a feature tower, each a causal transformer, fused late.

    The item tower is SASRec (`H^I = Enc_I(Dropout(LN(E_id[s] + P)))`). The
    feature tower reads only side information: at every slot `t`, the pooled
    attribute embeddings of the item `a_{1,t}..a_{p,t}` (looked up from the
    item tables held in the weights; `mean` pooling by default, as RecBole's
    `FDSA.yaml`) and the interaction-feature embeddings `b_{1,t}..b_{q,t}`,
    all of width `d`, are combined by `F` (see `EmbeddingFusion`), by default
    RecBole's vanilla attention over the features
    (`e_k = w_2^T ReLU(W_1 f_k + b_1)`, `alpha = softmax_k(e)`,
    `F = sum_k alpha_k f_k`):

    `H^F = Enc_F(Dropout(LN(F(a_{1,t}, .., b_{q,t}) + P)))`,

    with the same position table `P` and the same causal, padding-aware mask
    as the item tower, and its own weights. The towers are fused at every slot:

    `H = Dropout(LN([H^I || H^F] W^o + b^o))`, `W^o` of shape `[2d, d]`.

    As RecBole's `FDSA`, one LayerNorm is shared by the three call sites
    (`share_layer_norm=True`); with `False` each site has its own. Hidden
    states are scored against the pure item table `E_id`. The paper reads
    out the last slot only; applying the fusion at every slot gives the same
    last slot and lets `NextItemModel` train on all positions.

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
            At least one item or interaction feature is required.
        hidden_dim: width `d` of every embedding and of the hidden states.
        num_layers: number of transformer blocks in each tower.
        num_heads: attention heads per block; must divide `hidden_dim`.
        ff_dim: width of the feed-forward intermediate layers.
        dropout: dropout rate on the tower inputs, the residual branches and
            the fused output.
        attention_dropout: dropout rate on the attention probabilities.
        layer_norm_epsilon: epsilon of every layer normalization.
        pooling: `"sum"`, `"mean"` or `"max"`, pooling of multi-valued item
            features.
        feature_fusion: `"gate"` (vanilla attention over the features,
            RecBole's), `"add"` or `"concat"`: how the side features of a slot
            become the feature tower's input.
        gate_scorer: `"mlp"` (RecBole's `VanillaAttention`) or `"linear"`, the
            scorer of `"gate"` fusion.
        share_layer_norm: whether the two tower inputs and the fused output go
            through one LayerNorm (RecBole) or three.
        output_dropout: dropout rate on the fused output `H`, the vector that
            is scored; `None` (default) gives `dropout`, as RecBole. SASRec's
            output has no dropout of its own (its last block drops only its
            residual branches); `0.0` gives FDSA the same.
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
    backbone = FDSABackbone(
        num_items=1000,
        item_features=[{"name": "categories", "vocab_size": 60, "max_values": 4}],
        interaction_features=[{"name": "rating", "vocab_size": 7}],
    )
    backbone.set_item_feature_tables({"categories": categories_table})  # [1000, 4] ints
    hidden = backbone({"item_ids": np.array([[0, 17, 5]]), "rating": np.array([[0, 6, 3]])})["sequence_output"]
    model = NextItemModel(backbone)
    ```

    Reference:
        Zhang et al., "Feature-level Deeper Self-Attention Network for
        Sequential Recommendation", IJCAI 2019; RecBole's `FDSA` (Zhao et al.,
        CIKM 2021).
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
        pooling: str = "mean",
        feature_fusion: str = "gate",
        gate_scorer: str = "mlp",
        share_layer_norm: bool = True,
        output_dropout: float | None = None,
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
        check_choice("feature_fusion", feature_fusion, FUSION_MODES)
        check_choice("gate_scorer", gate_scorer, GATE_SCORERS)
        if not isinstance(share_layer_norm, bool):
            raise ValueError(f"`share_layer_norm` must be a bool. Received: share_layer_norm={share_layer_norm!r}")
        if not self.item_features and not self.interaction_features:
            raise ValueError(
                "FDSA's feature tower needs at least one side feature. "
                f"Received: item_features={item_features!r}, interaction_features={interaction_features!r}"
            )
        if output_dropout is not None:
            check_rate("output_dropout", output_dropout)
        self.feature_fusion = feature_fusion
        self.gate_scorer = gate_scorer
        self.share_layer_norm = share_layer_norm
        self.output_dropout_rate = output_dropout

    def build(self, inputs_shape: Any = None) -> None:
        # The item tower (SASRec's tables, embedding layer norm and encoder), then the side embeddings.
        super().build(inputs_shape)
        self.build_feature_tower(
            len(self.item_features) + len(self.interaction_features),
            self.feature_fusion,
            self.gate_scorer,
            share_layer_norm=self.share_layer_norm,
            output_dropout=self.output_dropout_rate,
        )
        self.built = True

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        item_hidden = super().call(inputs, training=training)["sequence_output"]
        mask = padding_mask(inputs["item_ids"])
        output = self.feature_tower_output(
            item_hidden, self.side_embedding_list(inputs), self.position_embedding(mask), mask, training
        )
        return {"sequence_output": output}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "feature_fusion": self.feature_fusion,
                "gate_scorer": self.gate_scorer,
                "share_layer_norm": self.share_layer_norm,
                "output_dropout": self.output_dropout_rate,
            }
        )
        return config
