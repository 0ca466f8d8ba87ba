"""DIF-SR: decoupled side-information fusion in the attention scores, with attribute predictors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from tfsidefuse.data.schema import NUM_RESERVED_IDS, PAD_ID
from tfsidefuse.layers._checks import check_choice, get_initializer
from tfsidefuse.layers.decoupled_attention import SCORE_FUSIONS, DecoupledAttention
from tfsidefuse.layers.masks import attention_mask, padding_mask
from tfsidefuse.models.side_feature_backbone import SideFeatureBackbone

#: Initial biases of the attribute predictors, see `DIFSRBackbone`.
PREDICTOR_BIASES = ("zeros", "prior")


def attribute_log_odds(table: Any, vocab_size: int) -> np.ndarray:
    """Log-odds of each attribute id among the real items of an item feature table.

    Args:
        table: integer array `[num_items, max_values]`, the attribute ids of
            every item (rows 0 and 1, the padding and OOV items, are left out;
            repeated ids in a row count once).
        vocab_size: size of the attribute vocabulary.

    Returns:
        float32 `[vocab_size]`: `log(q_c / (1 - q_c))` with the add-one
        smoothed frequency `q_c = (n_c + 1) / (n + 2)` of attribute `c` over
        the `n` real items; entry 0 (padding, never predicted) is 0.
    """
    items = np.asarray(table)[NUM_RESERVED_IDS:]
    present = np.zeros((len(items), vocab_size), dtype=bool)
    present[np.arange(len(items))[:, None], items] = True
    frequency = (present.sum(axis=0) + 1.0) / (len(items) + 2.0)
    log_odds = np.log(frequency) - np.log1p(-frequency)
    log_odds[PAD_ID] = 0.0
    return log_odds.astype("float32")


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

    Auxiliary attribute predictors (AAP): for every item feature `j`, a
    dense layer over the hidden state `u_t` of each slot that has a target
    `y_t` predicts the target item's attributes,
    `L_j = mean_{t: y_t != 0} mean_{c >= 1} BCE(sigmoid(u_t W_j + c_j)[c], 1[c in T_j(y_t)])`
    (multi-hot over the attribute ids, the padding id 0 left out), and the
    training loss gains `lambda_attr * L_j` per item feature. The item
    tables given to `set_item_feature_tables` feed both the attribute score
    maps (attributes of the history items) and the predictors (attributes of
    the target items). The attribute
    tables train (the official code leaves them frozen by mistake); their
    initialisation is `N(0, 0.02)` like every other table.

    The predictor biases start at 0 (`attribute_predictor_bias="zeros"`, as
    the official code), so every attribute starts at probability 0.5 although
    an item carries a few of hundreds: with a large `lambda_attr` the first
    updates then push the hidden states towards "no attribute", and the
    next-item metrics hardly move for the first epochs. `"prior"` starts each
    bias at the log-odds of its attribute's frequency among the items of the
    table, `c_j[c] = log(q_c / (1 - q_c))` with `q_c = (n_c + 1) / (n + 2)`
    (`n_c` of the `n` real items carry attribute `c`); the loss, the model
    and its other weights are the same. The biases are set when the tables
    are assigned with `set_item_feature_tables` (a model loaded from a file
    keeps its trained biases).

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
        lambda_attr: weight `lambda` of every attribute predictor loss; `0`
            turns them off.
        attribute_predictor_bias: `"zeros"` (official) or `"prior"`, the
            initial biases of the attribute predictors (see above).
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
        Hidden states `[batch, seq_len, hidden_dim]` (`[batch, 1,
        hidden_dim]` with `last_position_only`).

    Example:

    ```python
    backbone = DIFSRBackbone(
        num_items=1000,
        item_features=[{"name": "categories", "vocab_size": 60, "max_values": 4}],
        fusion="gate",
        lambda_attr=10.0,
    )
    backbone.set_item_feature_tables({"categories": categories_table})  # [1000, 4] ints
    hidden = backbone({"item_ids": np.array([[0, 17, 5]])})
    model = NextItemModel(backbone)  # fit() adds the attribute predictor losses
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
        lambda_attr: float = 10.0,
        attribute_predictor_bias: str = "zeros",
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
        if isinstance(lambda_attr, bool) or not isinstance(lambda_attr, (int, float)) or not lambda_attr >= 0:
            raise ValueError(f"`lambda_attr` must be a number >= 0. Received: lambda_attr={lambda_attr!r}")
        check_choice("attribute_predictor_bias", attribute_predictor_bias, PREDICTOR_BIASES)
        self.attribute_hidden_dim = attribute_hidden_dim
        self.fusion = fusion
        self.lambda_attr = lambda_attr
        self.attribute_predictor_bias = attribute_predictor_bias

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

    def build(self, inputs_shape: Any = None) -> None:
        super().build(inputs_shape)
        self.attribute_predictors = []
        for feature in self.item_features:
            predictor = keras.layers.Dense(
                feature["vocab_size"],
                kernel_initializer=get_initializer(None),
                dtype=self.dtype_policy,
                name=f"{feature['name']}_predictor",
            )
            predictor.build((None, None, self.hidden_dim))
            self.attribute_predictors.append(predictor)
        self.built = True

    def set_item_feature_tables(self, tables: Mapping[str, Any]) -> None:
        """Assigns the item feature tables; with `attribute_predictor_bias="prior"` also the predictor biases.

        Args:
            tables: dict feature name -> integer array `[num_items,
                max_values]` with an all-zero row 0, one per item feature.
        """
        super().set_item_feature_tables(tables)
        if self.attribute_predictor_bias != "prior":
            return
        for feature, predictor in zip(self.item_features, self.attribute_predictors):
            predictor.bias.assign(attribute_log_odds(tables[feature["name"]], feature["vocab_size"]))

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
        return x

    def auxiliary_loss(self, inputs: dict[str, Any], labels: Any, hidden: Any) -> dict[str, Any]:
        """The attribute predictor losses, `{"attribute_<name>": lambda_attr * L_j}` per item feature.

        Every slot with a target (`labels != 0`) counts once: all slots for
        `[batch, seq_len]` labels, the last one for `[batch]` labels.
        """
        if not self.item_features or self.lambda_attr == 0:
            return {}
        labels = ops.cast(labels, "int32")
        if len(labels.shape) == 1:
            hidden = hidden[:, -1, :]
        has_target = ops.cast(ops.not_equal(labels, PAD_ID), "float32")
        num_targets = ops.maximum(ops.sum(has_target), 1.0)
        lookups = self.side_information_embedding.item_feature_lookups
        losses = {}
        for feature, lookup, predictor in zip(self.item_features, lookups, self.attribute_predictors):
            vocab_size = feature["vocab_size"]
            logits = ops.cast(predictor(hidden), "float32")[..., 1:]
            # Attribute ids of the target items; the padding id is dropped with column 0.
            targets = ops.max(ops.one_hot(lookup(labels), vocab_size, dtype="float32"), axis=-2)[..., 1:]
            per_class = ops.binary_crossentropy(targets, logits, from_logits=True)
            per_slot = ops.sum(per_class, axis=-1) / max(vocab_size - 1, 1)
            loss = ops.sum(per_slot * has_target) / num_targets
            losses[f"attribute_{feature['name']}"] = self.lambda_attr * loss
        return losses

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "attribute_hidden_dim": self.attribute_hidden_dim,
                "fusion": self.fusion,
                "lambda_attr": self.lambda_attr,
                "attribute_predictor_bias": self.attribute_predictor_bias,
            }
        )
        return config
