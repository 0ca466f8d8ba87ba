"""COMIF: attributes fused at the embedding level, behaviours at the attention level."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops

from tfsidefuse.layers._checks import check_choice, rename_config_keys
from tfsidefuse.layers.decoupled_attention import SCORE_FUSIONS, SCORE_SCALES, DecoupledAttention
from tfsidefuse.layers.embedding_fusion import FUSION_MODES, GATE_SCORERS
from tfsidefuse.layers.masks import attention_mask, padding_mask
from tfsidefuse.models.side_feature_backbone import SideFeatureBackbone

PREDICTION_POOLINGS = ("same", "sum", "mean")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="tfsidefuse")
class COMIFBackbone(SideFeatureBackbone):
    """COMIF: item attributes fused into the item embeddings, behaviours into the attention scores.

    Item attributes are homogeneous with the item id and are fused at the
    embedding level, both at the input and at the prediction layer; user
    behaviours (the position, and every interaction feature: rating, time
    gap, action type) are fused at the attention level.

    - Input (eq. 5): `E_i = F_emb(E_id[s], a_1, .., a_p)`, with `a_j` the
      pooled embedding of item attribute `j` (see
      `SideInformationEmbedding`) and `F_emb` = add, concat or gate
      (`EmbeddingFusion`); `H^0 = Dropout(LN(E_i))`. No position is added.
    - Encoder (eq. 6): `num_layers` post-LN `TransformerBlock`s whose
      attention is `DecoupledAttention`: the item stream `H` gives queries,
      keys and values, each behaviour `E_r` (the position `P[pos]`, counted
      from the oldest real item, and every interaction-feature embedding,
      none of them updated by the layers) gives queries and keys only; the
      score maps `(H W^Q)(H W^K)^T` and `(E_r W^Q_r)(E_r W^K_r)^T` are fused
      by `F_attn` before the `1 / sqrt(d / h)` scaling and the causal mask.
    - Prediction (eq. 7): hidden states are scored against the fused item
      table `E_hat = F_emb(E_id, A_1, .., A_p)`, `[num_items, d]`, where
      `A_j[i]` is the pooled attribute embedding of item `i` (`item_table`).
    The paper's self-supervised objectives, Item-Attribute Alignment (eq. 9)
    and User Preference Alignment (eq. 10), are a head of the task,
    `COMIFAlignmentHead`; UPA's negative passes call this backbone with
    random behaviour positions (`behavior_position_ids`) and random
    interaction features.

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1.
        max_len: number of learned positions (the longest window).
        item_features: item-level features (attributes), a list of dicts
            `{"name", "vocab_size", "max_values"}`; their tables are
            assigned with `set_item_feature_tables`.
        interaction_features: interaction-level features (behaviours), a
            list of dicts `{"name", "vocab_size"}`, read from the inputs
            under their names.
        hidden_dim: width `d` of every embedding and of the hidden states.
        num_layers: number of transformer blocks.
        num_heads: attention heads per block; must divide `hidden_dim`.
        ff_dim: width of the feed-forward intermediate layer.
        dropout: dropout rate on the embeddings and the residual branches.
        attention_dropout: dropout rate on the attention probabilities.
        layer_norm_epsilon: epsilon of every layer normalization.
        fusion: `F_emb`, `"add"` (the paper's choice), `"concat"` or `"gate"`.
        gate_scorer: `"linear"` or `"mlp"`, the scorer of `"gate"` fusion.
        pooling: `"sum"`, `"mean"` or `"max"`, pooling of multi-valued
            attributes at the input.
        attention_fusion: `F_attn`, `"concat"` (the paper's choice, read as
            DIF-SR's concat of position-indexed key rows, shared by the
            heads), `"sum"` or `"gate"` (see `DecoupledAttention`).
        score_scale: the fused scores are divided by `sqrt(d_h)`
            (`"head_dim"`, as DIF-SR's decoupled attention and multi-head
            attention in general) or by `sqrt(d)` (`"hidden_dim"`, eq. 6 as
            printed).
        input_layer_norm: layer-normalize the fused input `E_i` before its
            dropout.
        position_at_input: also add the position embedding to the input (the
            paper does not: position is a behaviour).
        prediction_fusion: score against the fused item table (eq. 7) rather
            than the pure `E_id`.
        prediction_pooling: pooling of multi-valued attributes in the item
            table: `"same"` as `pooling`, `"sum"` or `"mean"`.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"`, int `[batch, seq_len]` left-padded
            with 0, and one int `[batch, seq_len]` entry per interaction
            feature (same padding), keyed by its name; other keys are ignored.
        training: bool, whether dropout is active.
        behavior_position_ids: optional int `[batch, seq_len]`, the positions
            that the position behaviour embeds instead of the slots' own
            (counted from the oldest real item); the input keeps its own
            positions with `position_at_input`.

    Returns:
        `{"sequence_output": hidden states [batch, seq_len, hidden_dim]}`.

    Example:

    ```python
    backbone = COMIFBackbone(
        num_items=1000,
        item_features=[{"name": "brand", "vocab_size": 60, "max_values": 1}],
        interaction_features=[{"name": "rating", "vocab_size": 7}],
    )
    backbone.set_item_feature_tables({"brand": brand_table})  # [1000, 1] ints
    hidden = backbone({"item_ids": np.array([[0, 17, 5]]), "rating": np.array([[0, 6, 3]])})["sequence_output"]
    model = NextItemModel(backbone, heads=[COMIFAlignmentHead()])  # scores against backbone.item_table()
    ```

    Reference:
        Kim et al., "Exploring the Side-Information Fusion for Sequential
        Recommendation", IEEE Access (COMIF).
    """

    def __init__(
        self,
        num_items: int,
        max_len: int = 50,
        item_features: Sequence[Mapping[str, Any]] = (),
        interaction_features: Sequence[Mapping[str, Any]] = (),
        hidden_dim: int = 128,
        num_layers: int = 3,
        num_heads: int = 4,
        ff_dim: int = 256,
        dropout: float = 0.5,
        attention_dropout: float = 0.5,
        layer_norm_epsilon: float = 1e-12,
        fusion: str = "add",
        gate_scorer: str = "linear",
        pooling: str = "sum",
        attention_fusion: str = "concat",
        score_scale: str = "head_dim",
        input_layer_norm: bool = True,
        position_at_input: bool = False,
        prediction_fusion: bool = True,
        prediction_pooling: str = "same",
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
        check_choice("attention_fusion", attention_fusion, SCORE_FUSIONS)
        check_choice("score_scale", score_scale, SCORE_SCALES)
        check_choice("prediction_pooling", prediction_pooling, PREDICTION_POOLINGS)
        for name in (
            "input_layer_norm",
            "position_at_input",
            "prediction_fusion",
        ):
            _check_bool(name, locals()[name])
        self.fusion = fusion
        self.gate_scorer = gate_scorer
        self.attention_fusion = attention_fusion
        self.score_scale = score_scale
        self.input_layer_norm = input_layer_norm
        self.position_at_input = position_at_input
        self.prediction_fusion = prediction_fusion
        self.prediction_pooling = prediction_pooling

    def build_side_embeddings(self) -> None:
        super().build_side_embeddings()
        self.embedding_fusion = self.make_embedding_fusion(
            self.fusion, 1 + len(self.item_features), "embedding_fusion", self.gate_scorer
        )

    @property
    def normalizes_embeddings(self) -> bool:
        return self.input_layer_norm

    def block_attention(self, index: int) -> DecoupledAttention:
        # Behaviours other than position take the attribute slots, at full width d (head width d / h).
        return DecoupledAttention(
            self.hidden_dim,
            self.num_heads,
            attribute_dims=[self.hidden_dim] * len(self.interaction_features),
            fusion=self.attention_fusion,
            max_len=self.max_len,
            dropout=self.attention_dropout,
            score_scale=self.score_scale,
            dtype=self.dtype_policy,
            name="decoupled_attention",
        )

    # ---------------------------------------------------------------------------------------------------------------
    # Forward pass
    # ---------------------------------------------------------------------------------------------------------------

    def _fused_item_embeddings(self, inputs: dict[str, Any], padding_mask: Any) -> Any:
        """`E_i = F_emb(E_id[s], a_1, .., a_p)` (plus the position with `position_at_input`), before LN."""
        side = self.side_information_embedding(inputs)
        # Indexed by name: the order of the fusion inputs must not depend on how dicts are traced.
        features = [self.item_embedding(inputs["item_ids"])]
        features += [side[feature["name"]] for feature in self.item_features]
        fused = self.embedding_fusion(features)
        if self.position_at_input:
            fused = fused + self.position_embedding(padding_mask)
        return fused

    def _encode(self, fused: Any, behaviors: list[Any], padding_mask: Any, training: bool | None) -> Any:
        """The encoder on `E_i`, with behaviours `[position, interaction features..]`."""
        x = self.normalize_embeddings(fused, training)
        causal_mask = attention_mask(padding_mask, causal=True)
        for block in self.transformer_layers:
            x = block(
                x,
                attention_mask=causal_mask,
                training=training,
                attribute_inputs=behaviors[1:],
                position_inputs=behaviors[0],
            )
        return x

    def call(
        self, inputs: dict[str, Any], training: bool | None = None, behavior_position_ids: Any = None
    ) -> dict[str, Any]:
        mask = padding_mask(inputs["item_ids"])
        if behavior_position_ids is None:
            behaviors = [self.position_embedding(mask)]
        else:
            behaviors = [ops.take(self.position_embedding.embeddings, behavior_position_ids, axis=0)]
        for feature, embedding in zip(
            self.interaction_features, self.side_information_embedding.interaction_feature_embeddings
        ):
            if feature["name"] not in inputs:
                raise ValueError(
                    f"`inputs` lacks the interaction feature {feature['name']!r}. Received keys: {sorted(inputs)}"
                )
            behaviors.append(embedding(inputs[feature["name"]]))
        return {"sequence_output": self._encode(self._fused_item_embeddings(inputs, mask), behaviors, mask, training)}

    def _attribute_table(self, index: int) -> Any:
        """`A_j`: the pooled embedding of item feature `j` of every item, `[num_items, hidden_dim]`."""
        side = self.side_information_embedding
        ids = ops.convert_to_tensor(side.item_feature_lookups[index].table)
        embedding = side.item_feature_embeddings[index]
        if self.prediction_pooling == "same":
            return embedding(ops.expand_dims(ids, 0))[0]
        vectors = embedding(ids)  # [num_items, max_values, d], zero at padding values
        summed = ops.sum(vectors, axis=1)
        if self.prediction_pooling == "sum":
            return summed
        count = ops.sum(ops.cast(ops.not_equal(ids, 0), summed.dtype), axis=1, keepdims=True)
        return summed / ops.maximum(count, 1.0)

    def item_table(self) -> Any:
        """The fused item table `F_emb(E_id, A_1, .., A_p)` of eq. 7, `[num_items, hidden_dim]`.

        With `prediction_fusion=False`, the pure item embedding `E_id`.
        """
        table = self.item_embedding.embeddings
        if not self.prediction_fusion:
            return table
        attributes = [self._attribute_table(index) for index in range(len(self.item_features))]
        return self.embedding_fusion([table] + attributes)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "fusion": self.fusion,
                "gate_scorer": self.gate_scorer,
                "attention_fusion": self.attention_fusion,
                "score_scale": self.score_scale,
                "input_layer_norm": self.input_layer_norm,
                "position_at_input": self.position_at_input,
                "prediction_fusion": self.prediction_fusion,
                "prediction_pooling": self.prediction_pooling,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> COMIFBackbone:
        # Version 0.2.0 saved `score_scale` under the name `attention_scale`.
        return super().from_config(rename_config_keys(config, {"attention_scale": "score_scale"}))
