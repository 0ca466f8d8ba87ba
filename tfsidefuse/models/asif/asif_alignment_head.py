"""ASIF's auxiliary objectives: representation-space alignment (RSA) and the soft HIE basis penalty."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfsidefuse.layers._checks import check_choice, check_positive
from tfsidefuse.models.auxiliary_head import AuxiliaryHead

RSA_REDUCTIONS = ("mean_rows", "literal")
RSA_SCOPES = ("sequence", "batch")
RSA_SOURCES = ("embeddings", "layers")
# Logit of the pairs left out of the contrastive softmax; finite so that fully masked rows stay NaN-free.
_EXCLUDED_LOGIT = -1e9
_NORM_EPSILON = 1e-8


def _l2_normalize(x: Any) -> Any:
    # The floor keeps the gradient finite at the zero vectors of padded slots and attribute-less items.
    squared_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x / ops.sqrt(ops.maximum(squared_norm, _NORM_EPSILON**2))


@keras.saving.register_keras_serializable(package="tfsidefuse")
class ASIFAlignmentHead(AuxiliaryHead):
    """ASIF's representation-space alignment (RSA) and the orthogonality penalty of a soft HIE basis.

    RSA (eqs. 6-9) is the loss `{"alignment": rsa_weight * L_co}`: per
    sequence, the item representations `x_t` and attribute representations
    `a_t` of the real slots are L2-normalised, `G = x~ a~^T / tau`, and
    `L_co = sum_t [-log softmax(G_t)_t - log softmax(G^T_t)_t] / (2 sum_b n_b)`
    (a symmetric InfoNCE; with `rsa_exclude_repeats`, pairs of the same item
    at two slots are no negatives). Slots whose `a_t` is zero (an item
    without attribute) take no part. The representations are the backbone's
    outputs (`ASIFBackbone`): with `rsa_source="embeddings"` the raw item
    embeddings `x_t = E_id[s_t]` and the attribute sums `a_t = sum_j
    a_{j,t}` of the item features (`"item_embeddings"`,
    `"attribute_embeddings"`; no loss without item features); with
    `"layers"` the mean of the loss on every layer's input streams, `x =
    X^l`, `a = sum of A^l` (`"item_streams"`, `"attribute_streams"`). With
    `rsa_scope="batch"` the contrast runs over the distinct items of the
    whole batch (memory `O((batch * seq_len)^2)`); `rsa_reduction="literal"`
    sums the row losses of a sequence and averages over sequences, as eq. 9
    is written (docs/models.md#asif-readings, A8).

    With a soft HIE basis (the backbone's `hie_basis="soft"`, which returns
    `"orthogonality_penalty"`), `{"orthogonality": beta ||Q^T Q - I||_F^2}`
    is added, `beta = hie_orthogonality_weight`.

    Args:
        use_rsa: add the alignment loss (`False`: the "w/o RSA" ablation).
        rsa_weight: `lambda >= 0`.
        rsa_temperature: `tau > 0`.
        rsa_reduction: `"mean_rows"` or `"literal"`.
        rsa_scope: `"sequence"` or `"batch"`.
        rsa_source: `"embeddings"` or `"layers"`.
        rsa_exclude_repeats: leave pairs of the same item out of the
            negatives (and, with `rsa_scope="batch"`, count each distinct item
            once).
        hie_orthogonality_weight: `beta >= 0` of the soft basis penalty.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        outputs: the `ASIFBackbone`'s output dict.
        inputs: the backbone's inputs; `"item_ids"` is read.
        labels: the batch's labels (not read).
        backbone: the backbone (not read).

    Returns:
        `{"alignment": ..., "orthogonality": ...}`, each where it applies.

    Example:

    ```python
    backbone = ASIFBackbone(num_items=1000, item_features=[{"name": "categories", "vocab_size": 60, "max_values": 4}])
    model = NextItemModel(backbone, heads=[ASIFAlignmentHead(rsa_weight=0.1)])  # adds 0.1 * L_co in training
    ```

    Reference:
        Wang et al., "Aligned Side Information Fusion Method for Sequential
        Recommendation", WWW 2024 (poster; eqs. 6-9).
    """

    def __init__(
        self,
        use_rsa: bool = True,
        rsa_weight: float = 0.1,
        rsa_temperature: float = 0.1,
        rsa_reduction: str = "mean_rows",
        rsa_scope: str = "sequence",
        rsa_source: str = "embeddings",
        rsa_exclude_repeats: bool = True,
        hie_orthogonality_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("rsa_reduction", rsa_reduction, RSA_REDUCTIONS)
        check_choice("rsa_scope", rsa_scope, RSA_SCOPES)
        check_choice("rsa_source", rsa_source, RSA_SOURCES)
        for name, value in (("use_rsa", use_rsa), ("rsa_exclude_repeats", rsa_exclude_repeats)):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
        for name, value in (("rsa_weight", rsa_weight), ("hie_orthogonality_weight", hie_orthogonality_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
        check_positive("rsa_temperature", rsa_temperature)
        self.use_rsa = use_rsa
        self.rsa_weight = rsa_weight
        self.rsa_temperature = rsa_temperature
        self.rsa_reduction = rsa_reduction
        self.rsa_scope = rsa_scope
        self.rsa_source = rsa_source
        self.rsa_exclude_repeats = rsa_exclude_repeats
        self.hie_orthogonality_weight = hie_orthogonality_weight

    def alignment_loss(self, item_ids: Any, items: Any, attributes: Any) -> Any:
        """The RSA loss `L_co` (unweighted) of one batch, float32 scalar.

        Args:
            item_ids: int `[batch, seq_len]`, `0` = padding.
            items: the item representations `x`, `[batch, seq_len, d]`.
            attributes: the attribute representations `a`, `[batch, seq_len, d]`.

        Returns:
            `L_co`; `0` when no slot has both a real item and a non-zero `a`.
        """
        items = ops.cast(items, "float32")
        attributes = ops.cast(attributes, "float32")
        item_ids = ops.cast(item_ids, "int32")
        batch_size = ops.shape(item_ids)[0]
        valid = ops.logical_and(ops.not_equal(item_ids, 0), ops.sum(ops.square(attributes), axis=-1) > 0)
        if self.rsa_scope == "batch":
            items = ops.reshape(items, (1, -1, ops.shape(items)[-1]))
            attributes = ops.reshape(attributes, (1, -1, ops.shape(attributes)[-1]))
            item_ids = ops.reshape(item_ids, (1, -1))
            valid = ops.reshape(valid, (1, -1))
        items = _l2_normalize(items)
        attributes = _l2_normalize(attributes)
        logits = ops.matmul(items, ops.transpose(attributes, (0, 2, 1))) / self.rsa_temperature

        length = ops.shape(item_ids)[1]
        same_slot = ops.expand_dims(ops.eye(length, dtype="bool"), axis=0)
        both_valid = ops.logical_and(ops.expand_dims(valid, 2), ops.expand_dims(valid, 1))
        rows = valid
        allowed = both_valid
        if self.rsa_exclude_repeats:
            other_item = ops.not_equal(ops.expand_dims(item_ids, 2), ops.expand_dims(item_ids, 1))
            if self.rsa_scope == "batch":
                # A slot stands for its item if no earlier real slot holds the same item: each item counts once.
                earlier = ops.expand_dims(ops.logical_not(ops.triu(ops.ones((length, length), dtype="bool"))), 0)
                same_item_before = ops.logical_and(ops.logical_and(both_valid, earlier), ops.logical_not(other_item))
                repeated = ops.any(same_item_before, axis=2)
                rows = ops.logical_and(valid, ops.logical_not(repeated))
                other_item = ops.logical_and(other_item, ops.expand_dims(rows, 1))
            allowed = ops.logical_and(both_valid, ops.logical_or(same_slot, other_item))

        def diagonal_log_softmax(scores: Any) -> Any:
            scores = ops.where(allowed, scores, _EXCLUDED_LOGIT)
            return ops.diagonal(ops.log_softmax(scores, axis=-1), axis1=1, axis2=2)

        row_losses = -(diagonal_log_softmax(logits) + diagonal_log_softmax(ops.transpose(logits, (0, 2, 1))))
        rows = ops.cast(rows, "float32")
        total = ops.sum(row_losses * rows)
        if self.rsa_reduction == "mean_rows":
            return total / (2.0 * ops.maximum(ops.sum(rows), 1.0))
        return total / (2.0 * ops.cast(batch_size, "float32"))

    def call(self, outputs: dict[str, Any], inputs: dict[str, Any], labels: Any, backbone: Any) -> dict[str, Any]:
        losses = {}
        if self.use_rsa:
            if self.rsa_source == "embeddings":
                pairs = []
                if "attribute_embeddings" in outputs:
                    pairs = [(outputs["item_embeddings"], outputs["attribute_embeddings"])]
            else:
                pairs = list(zip(outputs["item_streams"], outputs["attribute_streams"]))
            if pairs:
                item_ids = inputs["item_ids"]
                loss = sum(self.alignment_loss(item_ids, items, attributes) for items, attributes in pairs)
                losses["alignment"] = self.rsa_weight * loss / len(pairs)
        if "orthogonality_penalty" in outputs:
            losses["orthogonality"] = self.hie_orthogonality_weight * outputs["orthogonality_penalty"]
        return losses

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "use_rsa": self.use_rsa,
                "rsa_weight": self.rsa_weight,
                "rsa_temperature": self.rsa_temperature,
                "rsa_reduction": self.rsa_reduction,
                "rsa_scope": self.rsa_scope,
                "rsa_source": self.rsa_source,
                "rsa_exclude_repeats": self.rsa_exclude_repeats,
                "hie_orthogonality_weight": self.hie_orthogonality_weight,
            }
        )
        return config
