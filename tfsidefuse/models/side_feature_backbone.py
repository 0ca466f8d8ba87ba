"""The common base of the backbones that read item and interaction features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from tfsidefuse.layers._checks import check_choice
from tfsidefuse.layers.embedding_fusion import EmbeddingFusion
from tfsidefuse.layers.masks import attention_mask
from tfsidefuse.layers.side_feature_embedding import POOLINGS
from tfsidefuse.layers.side_information_embedding import SideInformationEmbedding, normalize_side_features
from tfsidefuse.models.sasrec.sasrec_backbone import SASRecBackbone


@keras.saving.register_keras_serializable(package="tfsidefuse")
class SideFeatureBackbone(SASRecBackbone):
    """A SASRec-style encoder with side features: the shared part of the side-information backbones.

    It holds SASRec's item and position embeddings, embedding layer norm and
    dropout and its stack of post-LN `TransformerBlock`s, plus one
    `SideInformationEmbedding` that maps the inputs to the embeddings of
    every side feature, `{name: [batch, seq_len, side_embedding_dim]}`: the
    pooled attribute embeddings `a_{1,t}..a_{p,t}` of the item at each slot
    (looked up from the item tables held in the weights) and the
    interaction-feature embeddings `b_{1,t}..b_{q,t}`. On its own it is
    SASRec (the side embeddings are built but not used); subclasses decide
    where the side information enters through the hooks `input_embeddings`,
    `build_side_embeddings` and `block_attention`, or their own `call`.

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
        hidden_dim: width `d` of the item embeddings and hidden states.
        num_layers: number of transformer blocks.
        num_heads: attention heads per block; must divide `hidden_dim`.
        ff_dim: width of the feed-forward intermediate layer.
        dropout: dropout rate on the embeddings and the residual branches.
        attention_dropout: dropout rate on the attention probabilities.
        layer_norm_epsilon: epsilon of every layer normalization.
        pooling: `"sum"`, `"mean"` or `"max"`, pooling of multi-valued item
            features.
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
    class MyBackbone(SideFeatureBackbone):
        def input_embeddings(self, inputs, padding_mask):
            side = self.side_information_embedding(inputs)
            return super().input_embeddings(inputs, padding_mask) + sum(side.values())

    backbone = MyBackbone(
        num_items=1000, item_features=[{"name": "categories", "vocab_size": 60, "max_values": 4}]
    )
    backbone.set_item_feature_tables({"categories": categories_table})  # [1000, 4] ints
    ```

    Reference:
        Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018
        (the encoder); RecBole's `SASRecF` (Zhao et al., CIKM 2021; side
        features of items and interactions).
    """

    #: Create `side_information_embedding` after the transformer blocks instead of before the embedding layer
    #: norm; it only fixes the order of the weights (which saved optimizer states follow).
    side_embeddings_after_encoder = False

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
        pooling: str = "sum",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_items=num_items,
            max_len=max_len,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            ff_dim=ff_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            **kwargs,
        )
        check_choice("pooling", pooling, POOLINGS)
        self.item_features, self.interaction_features = normalize_side_features(item_features, interaction_features)
        self.pooling = pooling

    @property
    def side_embedding_dim(self) -> int:
        """Width of every side-feature embedding: `hidden_dim` unless a subclass embeds them narrower."""
        return self.hidden_dim

    def make_side_information_embedding(
        self,
        names: Sequence[str] | None = None,
        width: int | None = None,
        name: str = "side_information_embedding",
    ) -> SideInformationEmbedding:
        """A built `SideInformationEmbedding` of some side features.

        Args:
            names: the features it embeds; `None` gives all of them.
            width: embedding width; `None` gives `side_embedding_dim`.
            name: the layer name.

        Returns:
            The layer.
        """
        item_features, interaction_features = self.item_features, self.interaction_features
        if names is not None:
            item_features = [feature for feature in item_features if feature["name"] in names]
            interaction_features = [feature for feature in interaction_features if feature["name"] in names]
        layer = SideInformationEmbedding(
            self.num_items,
            self.side_embedding_dim if width is None else width,
            item_features=item_features,
            interaction_features=interaction_features,
            pooling=self.pooling,
            dtype=self.dtype_policy,
            name=name,
        )
        layer.build()
        return layer

    def make_embedding_fusion(
        self, mode: str, num_inputs: int, name: str, gate_scorer: str = "linear"
    ) -> EmbeddingFusion:
        """A built `EmbeddingFusion` of `num_inputs` tensors `[batch, seq_len, hidden_dim]` into one."""
        fusion = EmbeddingFusion(
            self.hidden_dim, mode=mode, gate_scorer=gate_scorer, dtype=self.dtype_policy, name=name
        )
        fusion.build([(None, None, self.hidden_dim)] * num_inputs)
        return fusion

    def build_feature_tower(
        self,
        num_features: int,
        fusion: str,
        gate_scorer: str,
        num_layers: int | None = None,
        share_layer_norm: bool = False,
        output_dropout: float | None = None,
    ) -> None:
        """Builds a feature tower joined late to the item stream (FDSA; `SideFuseBackbone`'s `"late"` entry).

        The tower reads only side features: `G^0 = Dropout(LN(F(f_1, .., f_k)
        + P))`, then `num_layers` causal `TransformerBlock`s with their own
        weights, and is joined at every slot, `H = Dropout(LN([H^I || G^L]
        W^o + b^o))` (see `feature_tower_output`). `F` is an `EmbeddingFusion`
        (`feature_fusion_layer`); a single feature enters as it is under
        `"add"` and `"gate"` (both are the identity on one input) and through
        the projection under `"concat"`.

        Args:
            num_features: number `k` of side features the tower reads.
            fusion: `"add"`, `"concat"` or `"gate"`, the mode of `F`.
            gate_scorer: `"linear"` or `"mlp"`, the scorer of `"gate"`.
            num_layers: number of blocks; `None` gives `num_layers`.
            share_layer_norm: whether the tower input and the joined output
                reuse the embedding LayerNorm (RecBole's FDSA) instead of
                their own (`feature_layer_norm`, `output_layer_norm`).
            output_dropout: dropout rate on the joined output `H`; `None` gives
                `dropout`.
        """
        self.feature_fusion_layer = None
        if num_features > 1 or fusion == "concat":
            self.feature_fusion_layer = self.make_embedding_fusion(fusion, num_features, "feature_fusion", gate_scorer)
        self.feature_dropout = self.make_dropout("feature_dropout")
        self.feature_transformer_layers = self.build_transformer_layers(
            "feature_transformer_layer", num_layers=num_layers, custom_attention=False
        )
        self.tower_fusion = self.make_embedding_fusion("concat", 2, "tower_fusion")
        self.output_dropout = self.make_dropout("output_dropout", output_dropout)
        self.feature_tower_shares_layer_norm = share_layer_norm
        if not share_layer_norm:
            self.feature_layer_norm = self.make_layer_norm("feature_layer_norm")
            self.output_layer_norm = self.make_layer_norm("output_layer_norm")

    def feature_tower_output(
        self, item_hidden: Any, features: Sequence[Any], position: Any, padding_mask: Any, training: bool | None
    ) -> Any:
        """Runs the tower of `build_feature_tower` and joins it to the item stream.

        Args:
            item_hidden: the item stream's output `H^I`, `[batch, seq_len, hidden_dim]`.
            features: the tower's side-feature embeddings, `[batch, seq_len, hidden_dim]` each.
            position: the position embeddings `P`, `[batch, seq_len, hidden_dim]`.
            padding_mask: bool `[batch, seq_len]`, `True` at real items.
            training: whether dropout is active.

        Returns:
            The joined hidden states `[batch, seq_len, hidden_dim]`.
        """
        features = list(features)
        x = self.feature_fusion_layer(features) if self.feature_fusion_layer is not None else features[0]
        shared = self.feature_tower_shares_layer_norm
        x = (self.embeddings_layer_norm if shared else self.feature_layer_norm)(x + position)
        x = self.feature_dropout(x, training=training)
        causal_mask = attention_mask(padding_mask, causal=True)
        for block in self.feature_transformer_layers:
            x = block(x, attention_mask=causal_mask, training=training)
        fused = (self.embeddings_layer_norm if shared else self.output_layer_norm)(self.tower_fusion([item_hidden, x]))
        return self.output_dropout(fused, training=training)

    def build_side_embeddings(self) -> None:
        if not self.side_embeddings_after_encoder:
            self.side_information_embedding = self.make_side_information_embedding()

    def build(self, inputs_shape: Any = None) -> None:
        super().build(inputs_shape)
        if self.side_embeddings_after_encoder:
            self.side_information_embedding = self.make_side_information_embedding()

    def set_item_feature_tables(self, tables: Mapping[str, Any]) -> None:
        """Assigns the item id -> attribute ids table of every item feature.

        Builds the backbone if needed, then hands the tables to
        `SideInformationEmbedding.set_item_feature_tables`, which validates
        them.

        Args:
            tables: dict feature name -> integer array `[num_items,
                max_values]` with an all-zero row 0, one per item feature.

        Raises:
            ValueError: on a missing or unknown feature name, or a bad table.
        """
        if not self.built:
            self.build()
        self.side_information_embedding.set_item_feature_tables(tables)

    def side_embedding_list(self, inputs: dict[str, Any]) -> list[Any]:
        """The side-feature embeddings, item features then interaction features, in declaration order.

        Args:
            inputs: the call's input dict.

        Returns:
            A list of `[batch, seq_len, side_embedding_dim]` tensors.
        """
        side = self.side_information_embedding(inputs)
        # Indexed by name: the order must not depend on how dicts are traced.
        return [side[name] for name in self.side_information_embedding.feature_names]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "item_features": [dict(feature) for feature in self.item_features],
                "interaction_features": [dict(feature) for feature in self.interaction_features],
                "pooling": self.pooling,
            }
        )
        return config
