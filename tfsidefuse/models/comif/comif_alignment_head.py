"""COMIF's auxiliary objectives: item-attribute alignment (IAA) and user-preference alignment (UPA)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfsidefuse.data.schema import NUM_RESERVED_IDS
from tfsidefuse.layers._checks import check_choice, check_positive_int, check_seed
from tfsidefuse.layers.masks import padding_mask
from tfsidefuse.layers.rows import take_rows
from tfsidefuse.models.auxiliary_head import AuxiliaryHead

IAA_SCOPES = ("batch", "all_items")
IAA_MULTI_VALUED = ("uniform", "sum")
UPA_NEGATIVES = ("permute", "uniform")
# Logit of the padding attribute in the IAA softmax: never a candidate.
EXCLUDED_LOGIT = -1e9


@keras.saving.register_keras_serializable(package="tfsidefuse")
class COMIFAlignmentHead(AuxiliaryHead):
    """COMIF's self-supervised objectives: item-attribute (IAA) and user-preference (UPA) alignment.

    - Item-Attribute Alignment (eq. 9): for every item `i` with attributes,
      `-log softmax_a(e_id(i) . E_a^T)[a(i)]` over the attribute vocabulary
      (pad attribute excluded) with the backbone's pure item and attribute
      embeddings; a multi-valued item averages over its values
      (`iaa_multi_valued`); averaged over the items of the batch
      (`iaa_scope`) and over the item features.
    - User Preference Alignment (eq. 10): with `k` passes of the backbone
      over the same items with random behaviour sequences (positions and
      interaction features) giving `h_1..h_k`, and `e_y` the fused embedding
      of the next item (`backbone.item_table()`), `-log(exp(e_y.h) /
      (exp(e_y.h) + sum_j exp(e_y.h_j)))` averaged over the slots that have
      a target.

    The training loss gains `iaa_weight * L_IAA + upa_weight * L_UPA`
    (eq. 11; IAA only with item features).

    Args:
        iaa_weight: `lambda_1`, weight of the IAA loss; 0 disables it.
        iaa_scope: `"batch"` (the distinct items of the batch, history and
            targets) or `"all_items"` (every item, every step).
        iaa_multi_valued: for an item with several attribute values,
            `"uniform"` averages the per-value losses (a soft target uniform
            over its values), `"sum"` adds them.
        upa_weight: `lambda_2`, weight of the UPA loss; 0 disables it.
        upa_num_negatives: `k`, random behaviour sequences per sequence.
        upa_negatives: `"permute"` (a random permutation of each behaviour
            over the real slots) or `"uniform"` (i.i.d. uniform ids: positions
            in `[0, max_len)`, feature ids among the real ids).
        upa_stop_gradient: stop the gradient through the negative passes.
        seed: seed of the random behaviour sequences.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        outputs: the `COMIFBackbone`'s output dict; `"sequence_output"` is read.
        inputs: the input dict the backbone received.
        labels: next-item labels, `[batch, seq_len]` or `[batch]`, 0 = no target.
        backbone: the `COMIFBackbone` (its tables, and the negative passes).

    Returns:
        `{"iaa": iaa_weight * L_IAA, "upa": upa_weight * L_UPA}`, each where
        it applies.

    Example:

    ```python
    backbone = COMIFBackbone(num_items=1000, item_features=[{"name": "brand", "vocab_size": 60, "max_values": 1}])
    model = NextItemModel(backbone, heads=[COMIFAlignmentHead(iaa_weight=0.4, upa_weight=0.4)])
    ```

    Reference:
        Kim et al., "Exploring the Side-Information Fusion for Sequential
        Recommendation", IEEE Access (COMIF; eqs. 9-11).
    """

    def __init__(
        self,
        iaa_weight: float = 0.4,
        iaa_scope: str = "batch",
        iaa_multi_valued: str = "uniform",
        upa_weight: float = 0.4,
        upa_num_negatives: int = 4,
        upa_negatives: str = "permute",
        upa_stop_gradient: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("iaa_scope", iaa_scope, IAA_SCOPES)
        check_choice("iaa_multi_valued", iaa_multi_valued, IAA_MULTI_VALUED)
        check_choice("upa_negatives", upa_negatives, UPA_NEGATIVES)
        if not isinstance(upa_stop_gradient, bool):
            raise ValueError(f"`upa_stop_gradient` must be a bool. Received: upa_stop_gradient={upa_stop_gradient!r}")
        for name, value in (("iaa_weight", iaa_weight), ("upa_weight", upa_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"`{name}` must be a non-negative number. Received: {name}={value!r}")
        check_positive_int("upa_num_negatives", upa_num_negatives, allow_bool=False)
        check_seed(seed)
        self.iaa_weight = iaa_weight
        self.iaa_scope = iaa_scope
        self.iaa_multi_valued = iaa_multi_valued
        self.upa_weight = upa_weight
        self.upa_num_negatives = upa_num_negatives
        self.upa_negatives = upa_negatives
        self.upa_stop_gradient = upa_stop_gradient
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="upa_seed_generator")

    def call(self, outputs: dict[str, Any], inputs: dict[str, Any], labels: Any, backbone: Any) -> dict[str, Any]:
        losses = {}
        if backbone.item_features and self.iaa_weight > 0:
            losses["iaa"] = self.iaa_weight * self.iaa_loss(inputs, labels, backbone)
        if self.upa_weight > 0:
            losses["upa"] = self.upa_weight * self.upa_loss(inputs, labels, outputs["sequence_output"], backbone)
        return losses

    def _items_in_batch(self, inputs: dict[str, Any], labels: Any, num_items: int) -> Any:
        """float32 `[num_items]`, 1 for the items of the batch's histories and targets."""
        ids = ops.concatenate(
            [ops.reshape(ops.cast(inputs["item_ids"], "int32"), (-1,)), ops.reshape(ops.cast(labels, "int32"), (-1,))]
        )
        ids = ops.where(ops.logical_and(ids >= 0, ids < num_items), ids, ops.zeros_like(ids))
        counts = ops.scatter(ops.expand_dims(ids, 1), ops.ones_like(ids), (num_items,))
        return ops.cast(counts > 0, "float32")

    def iaa_loss(self, inputs: dict[str, Any], labels: Any, backbone: Any) -> Any:
        """Unweighted `L_IAA` (eq. 9), averaged over the item features; 0 without item features.

        Args:
            inputs: the batch's input dict (its item ids choose the items
                with `iaa_scope="batch"`).
            labels: the batch's next-item labels, any shape.
            backbone: the `COMIFBackbone`, whose item and attribute tables are aligned.

        Returns:
            A float32 scalar.
        """
        if not backbone.item_features:
            return ops.zeros((), "float32")
        if self.iaa_scope == "batch":
            items = self._items_in_batch(inputs, labels, backbone.num_items)
        else:
            items = ops.ones((backbone.num_items,), "float32")
        item_vectors = ops.cast(backbone.item_embedding.embeddings, "float32")
        side = backbone.side_information_embedding
        losses = []
        for lookup, embedding in zip(side.item_feature_lookups, side.item_feature_embeddings):
            attribute_vectors = ops.cast(embedding.embeddings, "float32")
            logits = ops.matmul(item_vectors, ops.transpose(attribute_vectors))  # [num_items, vocab_size]
            is_pad = ops.expand_dims(ops.arange(ops.shape(logits)[1]) == 0, 0)
            log_probabilities = ops.log_softmax(ops.where(is_pad, EXCLUDED_LOGIT, logits), axis=-1)
            ids = ops.cast(ops.convert_to_tensor(lookup.table), "int32")
            picked = ops.take_along_axis(log_probabilities, ids, axis=1)  # [num_items, max_values]
            valid = ops.cast(ops.not_equal(ids, 0), "float32")
            count = ops.sum(valid, axis=1)
            per_item = -ops.sum(picked * valid, axis=1)
            if self.iaa_multi_valued == "uniform":
                per_item = per_item / ops.maximum(count, 1.0)
            weights = items * ops.cast(count > 0, "float32")
            losses.append(ops.sum(weights * per_item) / ops.maximum(ops.sum(weights), 1.0))
        return ops.mean(ops.stack(losses))

    def random_behavior_ids(self, inputs: dict[str, Any], padding_mask: Any, backbone: Any) -> list[Any]:
        """Random behaviour sequences over the real slots, the negatives of UPA.

        Args:
            inputs: dict with the interaction features, int `[batch, seq_len]`.
            padding_mask: bool `[batch, seq_len]`, `True` at real items.
            backbone: the `COMIFBackbone` (its `max_len` and interaction features).

        Returns:
            int32 `[batch, seq_len]` ids, 0 at padding: the position ids, then
            one sequence per interaction feature. With `upa_negatives=
            "permute"` each is an independent random permutation of the real
            values over the real slots (positions: of `0..length - 1`); with
            `"uniform"`, i.i.d. uniform ids.
        """
        shape = ops.shape(padding_mask)
        if self.upa_negatives == "permute":
            positions = ops.clip(ops.cumsum(ops.cast(padding_mask, "int32"), axis=1) - 1, 0, backbone.max_len - 1)
            values = [positions] + [ops.cast(inputs[f["name"]], "int32") for f in backbone.interaction_features]
            randomized = []
            for value in values:
                # Padding sorts first, so the (left-padded) real slots receive the real values in random order.
                keys = ops.where(padding_mask, keras.random.uniform(shape, seed=self.seed_generator), -1.0)
                randomized.append(ops.take_along_axis(value, ops.argsort(keys, axis=1), axis=1))
        else:
            # Positions in [0, max_len); feature ids among the real ones (the reserved ids are padding and OOV).
            ranges = [(0, backbone.max_len)] + [
                (min(NUM_RESERVED_IDS, f["vocab_size"] - 1), f["vocab_size"]) for f in backbone.interaction_features
            ]
            randomized = [
                ops.where(
                    padding_mask, keras.random.randint(shape, low, high, seed=self.seed_generator, dtype="int32"), 0
                )
                for low, high in ranges
            ]
        return randomized

    def upa_loss(self, inputs: dict[str, Any], labels: Any, hidden: Any, backbone: Any) -> Any:
        """Unweighted `L_UPA` (eq. 10) over the slots that have a target.

        Runs the backbone (in training mode) on `upa_num_negatives` copies of
        the batch with random behaviour sequences.

        Args:
            inputs: the input dict the backbone received.
            labels: next-item labels, `[batch, seq_len]` (every slot) or
                `[batch]` (the last slot); 0 = no target.
            hidden: the hidden states the backbone returned, `[batch, seq_len, d]`.
            backbone: the `COMIFBackbone`.

        Returns:
            A float32 scalar.
        """
        k = self.upa_num_negatives
        tiled = {"item_ids": ops.tile(inputs["item_ids"], (k, 1))}
        for feature in backbone.interaction_features:
            tiled[feature["name"]] = ops.tile(inputs[feature["name"]], (k, 1))
        random_ids = self.random_behavior_ids(tiled, padding_mask(tiled["item_ids"]), backbone)
        for feature, ids in zip(backbone.interaction_features, random_ids[1:]):
            tiled[feature["name"]] = ids
        negatives = backbone(tiled, training=True, behavior_position_ids=random_ids[0])["sequence_output"]
        if self.upa_stop_gradient:
            negatives = ops.stop_gradient(negatives)
        batch_size, seq_len = ops.shape(hidden)[0], ops.shape(hidden)[1]
        negatives = ops.reshape(negatives, (k, batch_size, seq_len, backbone.hidden_dim))
        labels = ops.cast(labels, "int32")
        if len(labels.shape) == 1:
            hidden, negatives = hidden[:, -1], negatives[:, :, -1]
        targets = ops.cast(take_rows(backbone.item_table(), labels), "float32")  # e_y
        positive = ops.sum(targets * ops.cast(hidden, "float32"), axis=-1)
        negative = ops.sum(targets[None] * ops.cast(negatives, "float32"), axis=-1)  # [k, ...]
        logits = ops.concatenate([positive[None], negative], axis=0)
        per_slot = ops.logsumexp(logits, axis=0) - positive
        weights = ops.cast(ops.not_equal(labels, 0), "float32")
        return ops.sum(weights * per_slot) / ops.maximum(ops.sum(weights), 1.0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "iaa_weight": self.iaa_weight,
                "iaa_scope": self.iaa_scope,
                "iaa_multi_valued": self.iaa_multi_valued,
                "upa_weight": self.upa_weight,
                "upa_num_negatives": self.upa_num_negatives,
                "upa_negatives": self.upa_negatives,
                "upa_stop_gradient": self.upa_stop_gradient,
                "seed": self.seed,
            }
        )
        return config
