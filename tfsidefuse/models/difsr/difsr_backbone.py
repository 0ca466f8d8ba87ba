"""DIF-SR: decoupled side-information fusion in the attention scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from tfsidefuse.layers._checks import check_choice
from tfsidefuse.layers.decoupled_attention import SCORE_FUSIONS, DecoupledAttention
from tfsidefuse.layers.masks import attention_mask, padding_mask
from tfsidefuse.models.side_feature_backbone import SideFeatureBackbone


@keras.saving.register_keras_serializable(package="tfsidefuse")
class DIFSRBackbone(SideFeatureBackbone):
    """DIF-SR: side information enters only the attention scores, each source with its own map.

    The item stream carries item ids alone, `R^0 = Dropout(LN(E_id[s]))`
    (no position added). Every layer is a post-LN `TransformerBlock` whose
    attention is a `DecoupledAttention`: the item stream, the position
    embeddings `P` (counted from the oldest real item) and every side
    feature's pooled embedding `A_j` (width `attribute_hidden_dim`, head
    width `attribute_hidden_dim // num_heads`) each give a score map
    `Q K^T`; the maps are fused by `fusion` (`sum`, `concat` or `gate`),
    scaled by `1 / sqrt(hidden_dim / num_heads)`, masked (causal and padding)
    and normalised, and the values come from the item stream only. `P` and
    the `A_j` are the same, unnormalised, in every layer. Hidden states are
    scored against `E_id`.

    Interaction features (rating, time gap, ...) are decoupled sources like
    the item attributes: each adds its own score map (docs/models.md#difsr).

    The auxiliary attribute predictors (AAP) that DIF-SR trains with are a
    head of the task, `DIFSRAttributeHead`, which reads the hidden states and
    this backbone's item tables: the tables given to
    `set_item_feature_tables` feed both the attribute score maps (attributes
    of the history items) and the predictors (attributes of the target
    items). The attribute tables train (the official code leaves them frozen
    by mistake); their initialisation is `N(0, 0.02)` like every other table.

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1.
        max_len: number of learned positions, and the key-row length of
            concat and gate fusion (the longest window).
        item_features: item-level features, a list of dicts
            `{"name", "vocab_size", "max_values"}` (see
            `SideInformationEmbedding`); their tables are assigned with
            `set_item_feature_tables`.
        interaction_features: interaction-level features, a list of dicts
            `{"name", "vocab_size"}`, read from the inputs under their names.
        hidden_dim: width `d` of the item stream, positions and hidden states.
        attribute_hidden_dim: width `d_j` of every side-feature embedding; at
            least `num_heads`.
        num_layers: number of transformer blocks.
        num_heads: attention heads per block; must divide `hidden_dim`.
        ff_dim: width of the feed-forward intermediate layer.
        dropout: dropout rate on the item embeddings and the residual branches.
        attention_dropout: dropout rate on the attention probabilities.
        layer_norm_epsilon: epsilon of every layer normalization.
        fusion: `"sum"`, `"concat"` or `"gate"` (the official runs), how the
            score maps are fused.
        pooling: `"sum"` (official), `"mean"` or `"max"`, pooling of
            multi-valued item features.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"`, int `[batch, seq_len]` left-padded
            with 0 (`seq_len <= max_len`), and one int `[batch, seq_len]`
            entry per interaction feature, keyed by its name; other keys are
            ignored.
        training: bool, whether dropout is active.
        last_position_only: bool, return the hidden state of the last slot
            only, `[batch, 1, hidden_dim]` (the last block computes its
            query, feed-forward and normalisation for that slot alone; the
            values are those of the full call's last slot). `NextItemModel`
            uses it for last-position scoring.

    Returns:
        `{"sequence_output": hidden states [batch, seq_len, hidden_dim]}`
        (`[batch, 1, hidden_dim]` with `last_position_only`).

    Example:

    ```python
    backbone = DIFSRBackbone(
        num_items=1000,
        item_features=[{"name": "categories", "vocab_size": 60, "max_values": 4}],
        fusion="gate",
    )
    backbone.set_item_feature_tables({"categories": categories_table})  # [1000, 4] ints
    hidden = backbone({"item_ids": np.array([[0, 17, 5]])})["sequence_output"]
    head = DIFSRAttributeHead(backbone.item_features, backbone.hidden_dim, lambda_attr=10.0)
    model = NextItemModel(backbone, heads=[head])  # fit() adds the attribute predictor losses
    ```

    Reference:
        Xie et al., "Decoupled Side Information Fusion for Sequential
        Recommendation", SIGIR 2022.
    """

    def __init__(
        self,
        num_items: int,
        max_len: int = 50,
        item_features: Sequence[Mapping[str, Any]] = (),
        interaction_features: Sequence[Mapping[str, Any]] = (),
        hidden_dim: int = 256,
        attribute_hidden_dim: int = 64,
        num_layers: int = 4,
        num_heads: int = 8,
        ff_dim: int = 256,
        dropout: float = 0.5,
        attention_dropout: float = 0.3,
        layer_norm_epsilon: float = 1e-12,
        fusion: str = "gate",
        pooling: str = "sum",
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
        if not isinstance(attribute_hidden_dim, int) or isinstance(attribute_hidden_dim, bool):
            raise ValueError(
                f"`attribute_hidden_dim` must be an int. Received: attribute_hidden_dim={attribute_hidden_dim!r}"
            )
        if attribute_hidden_dim < num_heads:
            raise ValueError(
                f"`attribute_hidden_dim` must be at least num_heads={num_heads} (its head width is "
                f"attribute_hidden_dim // num_heads). Received: attribute_hidden_dim={attribute_hidden_dim!r}"
            )
        check_choice("fusion", fusion, SCORE_FUSIONS)
        self.attribute_hidden_dim = attribute_hidden_dim
        self.fusion = fusion

    @property
    def side_embedding_dim(self) -> int:
        return self.attribute_hidden_dim

    def block_attention(self, index: int) -> DecoupledAttention:
        return DecoupledAttention(
            self.hidden_dim,
            self.num_heads,
            attribute_dims=[self.attribute_hidden_dim] * len(self.side_information_embedding.feature_names),
            fusion=self.fusion,
            max_len=self.max_len,
            dropout=self.attention_dropout,
            dtype=self.dtype_policy,
            name="decoupled_attention",
        )

    def call(self, inputs: dict[str, Any], training: bool | None = None, last_position_only: bool = False) -> Any:
        item_ids = inputs["item_ids"]
        mask = padding_mask(item_ids)
        attributes = self.side_embedding_list(inputs)
        # The position score map is computed on the table and gathered per pair of slots.
        position_ids = self.position_embedding.position_ids(mask)
        x = self.normalize_embeddings(self.item_embedding(item_ids), training)
        causal_mask = attention_mask(mask, causal=True)
        for block, last_query_only in self.blocks_with_last_query(last_position_only):
            x = block(
                x,
                attention_mask=causal_mask,
                attribute_inputs=attributes,
                position_inputs=self.position_embedding.embeddings,
                position_ids=position_ids,
                training=training,
                last_query_only=last_query_only,
            )
        return {"sequence_output": x}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "attribute_hidden_dim": self.attribute_hidden_dim,
                "fusion": self.fusion,
            }
        )
        return config
