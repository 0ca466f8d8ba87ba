"""DIF-SR's auxiliary attribute predictors: the target item's attributes from the hidden states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from tfsidefuse.data.schema import NUM_RESERVED_IDS, PAD_ID
from tfsidefuse.layers._checks import check_choice, check_positive_int, check_seed, get_initializer
from tfsidefuse.models.auxiliary_head import AuxiliaryHead

#: Initial biases of the attribute predictors, see `DIFSRAttributeHead`.
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
class DIFSRAttributeHead(AuxiliaryHead):
    """DIF-SR's auxiliary attribute predictors (AAP): each item feature of the next item, from the hidden state.

    For every item feature `j`, a dense layer over the hidden state `u_t`
    (the backbone's `"sequence_output"`) of each slot that has a target
    `y_t` predicts the target item's attributes,
    `L_j = mean_{t: y_t != 0} mean_{c >= 1} BCE(sigmoid(u_t W_j + c_j)[c], 1[c in T_j(y_t)])`
    (multi-hot over the attribute ids, the padding id 0 left out), and the
    training loss gains `lambda_attr * L_j` per item feature. The target
    attributes `T_j(y_t)` come from the backbone's item-feature tables, the
    same tables that feed its attribute score maps.

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

    The loss is computed without a multi-hot target: per slot it is
    `sum_{c >= 1} softplus(x_c) - sum_{c in T_j(y_t)} x_c`, divided by
    `vocab_size - 1`, with the target logits gathered. With
    `attribute_negatives=K` the first sum keeps its exact terms for the
    target attributes and estimates the rest from `K` attribute ids drawn
    uniformly from `1..vocab_size-1` once per batch (shared by every slot):
    `(vocab_size - 1) / K * sum_k 1[c_k not in T_j(y_t)] softplus(x_{c_k})`,
    an unbiased estimate; only the `K` drawn columns and the target columns
    of the predictor are scored, so a step costs `O(K)` and not
    `O(vocab_size)` per slot. A feature with `vocab_size - 1 <= K` keeps the
    exact loss.

    Args:
        item_features: the backbone's item-level features, dicts `{"name",
            "vocab_size", ...}`; one predictor per feature, `vocab_size`
            outputs.
        hidden_dim: width of the hidden states.
        lambda_attr: weight `lambda` of every attribute predictor loss; `0`
            turns them off.
        attribute_predictor_bias: `"zeros"` (official) or `"prior"`, the
            initial biases of the predictors (see above).
        attribute_negatives: `None` (default) for the exact loss over every
            attribute id, or the number `K` of attribute ids drawn per batch
            for the sampled estimate (see above); for vocabularies of many
            thousand values.
        seed: seed of the draws of `attribute_negatives`.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        outputs: the backbone's output dict; `"sequence_output"` is read.
        inputs: the backbone's inputs (not read).
        labels: next-item labels, `[batch, seq_len]` (every slot with a target
            counts once) or `[batch]` (the last slot), `0` = no target.
        backbone: the `DIFSRBackbone`, whose item-feature tables give the
            target attributes.

    Returns:
        `{"attribute_<name>": lambda_attr * L_j}` per item feature; empty
        with `lambda_attr=0` or without item features.

    Example:

    ```python
    backbone = DIFSRBackbone(num_items=1000, item_features=[{"name": "categories", "vocab_size": 60, "max_values": 4}])
    head = DIFSRAttributeHead(backbone.item_features, backbone.hidden_dim, lambda_attr=10.0)
    model = NextItemModel(backbone, heads=[head])  # fit() adds the attribute predictor losses
    ```

    Reference:
        Xie et al., "Decoupled Side Information Fusion for Sequential
        Recommendation", SIGIR 2022 (eq. 13).
    """

    def __init__(
        self,
        item_features: Sequence[Mapping[str, Any]] = (),
        hidden_dim: int = 256,
        lambda_attr: float = 10.0,
        attribute_predictor_bias: str = "zeros",
        attribute_negatives: int | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        item_features = [dict(feature) for feature in item_features]
        for feature in item_features:
            if not isinstance(feature.get("name"), str) or not isinstance(feature.get("vocab_size"), int):
                raise ValueError(
                    f"`item_features` must be dicts with a str 'name' and an int 'vocab_size'. Received: {feature!r}"
                )
        check_positive_int("hidden_dim", hidden_dim, allow_bool=False)
        if isinstance(lambda_attr, bool) or not isinstance(lambda_attr, (int, float)) or not lambda_attr >= 0:
            raise ValueError(f"`lambda_attr` must be a number >= 0. Received: lambda_attr={lambda_attr!r}")
        check_choice("attribute_predictor_bias", attribute_predictor_bias, PREDICTOR_BIASES)
        if attribute_negatives is not None:
            check_positive_int("attribute_negatives", attribute_negatives, allow_bool=False)
        check_seed(seed)
        self.item_features = item_features
        self.hidden_dim = hidden_dim
        self.lambda_attr = lambda_attr
        self.attribute_predictor_bias = attribute_predictor_bias
        self.attribute_negatives = attribute_negatives
        self.seed = seed
        # Only a sampling head has a seed state: the weights of exact heads saved before this option still load.
        if attribute_negatives is not None:
            self.seed_generator = keras.random.SeedGenerator(seed, name="attribute_seed_generator")

    def build(self, input_shape: Any = None) -> None:
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
        """With `attribute_predictor_bias="prior"`, starts the predictor biases at the attribute log-odds.

        Args:
            tables: dict feature name -> integer array `[num_items,
                max_values]`, one per item feature.
        """
        if not self.built:
            self.build()
        if self.attribute_predictor_bias != "prior":
            return
        for feature, predictor in zip(self.item_features, self.attribute_predictors):
            predictor.bias.assign(attribute_log_odds(tables[feature["name"]], feature["vocab_size"]))

    def call(self, outputs: dict[str, Any], inputs: dict[str, Any], labels: Any, backbone: Any) -> dict[str, Any]:
        if not self.item_features or self.lambda_attr == 0:
            return {}
        labels = ops.cast(labels, "int32")
        hidden = outputs["sequence_output"]
        if len(labels.shape) == 1:
            hidden = hidden[:, -1, :]
        has_target = ops.cast(ops.not_equal(labels, PAD_ID), "float32")
        num_targets = ops.maximum(ops.sum(has_target), 1.0)
        side = backbone.side_information_embedding
        lookups = {feature["name"]: lookup for feature, lookup in zip(side.item_features, side.item_feature_lookups)}
        losses = {}
        for feature, predictor in zip(self.item_features, self.attribute_predictors):
            targets = lookups[feature["name"]](labels)  # [..., max_values] attribute ids, 0 = none
            per_slot = self._bce_sum(hidden, targets, predictor, feature["vocab_size"])
            loss = ops.sum(per_slot / max(feature["vocab_size"] - 1, 1) * has_target) / num_targets
            losses[f"attribute_{feature['name']}"] = self.lambda_attr * loss
        return losses

    def _bce_sum(self, hidden: Any, targets: Any, predictor: Any, vocab_size: int) -> Any:
        """Per slot, the sum over the attribute ids `1..vocab_size-1` of the BCE of the predictor's logits against
        the multi-hot of `targets` (exact, or estimated from `attribute_negatives` drawn ids)."""
        targets = ops.cast(targets, "int32")
        # An attribute id counts once per target item: padding and repeats within a row are left out.
        width = targets.shape[-1]
        earlier = np.tril(np.ones((width, width), dtype=bool), k=-1)  # [m, k]: k < m
        repeat = ops.any(ops.logical_and(ops.equal(targets[..., :, None], targets[..., None, :]), earlier), axis=-1)
        is_target = ops.logical_and(ops.not_equal(targets, PAD_ID), ops.logical_not(repeat))
        num_negatives = self.attribute_negatives
        if num_negatives is None or num_negatives >= vocab_size - 1:
            logits = ops.cast(predictor(hidden), "float32")
            target_logits = ops.take_along_axis(logits, targets, axis=-1)
            return ops.sum(ops.softplus(logits[..., 1:]), axis=-1) - ops.sum(
                ops.where(is_target, target_logits, 0.0), axis=-1
            )
        # The sampled scores read the predictor's columns: in float32, as the logits of the exact loss.
        hidden = ops.cast(hidden, "float32")
        kernel, bias = ops.cast(predictor.kernel, "float32"), ops.cast(predictor.bias, "float32")
        # The target columns: sum_{c in T} (softplus(x_c) - x_c) = sum_{c in T} softplus(-x_c).
        target_columns = ops.take(ops.transpose(kernel), targets, axis=0)  # [..., max_values, hidden]
        target_logits = ops.sum(ops.expand_dims(hidden, -2) * target_columns, axis=-1) + ops.take(bias, targets)
        positive = ops.sum(ops.where(is_target, ops.softplus(-target_logits), 0.0), axis=-1)
        drawn = keras.random.randint((num_negatives,), 1, vocab_size, dtype="int32", seed=self.seed_generator)
        drawn_logits = ops.matmul(hidden, ops.take(kernel, drawn, axis=1)) + ops.take(bias, drawn)  # [..., K]
        # A drawn id that is one of the slot's targets is left out: its term is in `positive` already.
        hit = ops.any(ops.logical_and(ops.equal(targets[..., :, None], drawn), ops.expand_dims(is_target, -1)), axis=-2)
        negative = ops.sum(ops.where(hit, 0.0, ops.softplus(drawn_logits)), axis=-1)
        return positive + negative * ((vocab_size - 1) / num_negatives)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "item_features": [dict(feature) for feature in self.item_features],
                "hidden_dim": self.hidden_dim,
                "lambda_attr": self.lambda_attr,
                "attribute_predictor_bias": self.attribute_predictor_bias,
                "attribute_negatives": self.attribute_negatives,
                "seed": self.seed,
            }
        )
        return config
