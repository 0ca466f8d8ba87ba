"""Base class of the heads of the papers' auxiliary objectives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras


@keras.saving.register_keras_serializable(package="tfsidefuse")
class AuxiliaryHead(keras.layers.Layer):
    """Base class of the heads of auxiliary objectives: backbone outputs and labels -> weighted losses.

    A paper's auxiliary objective (DIF-SR's attribute predictors, ASIF's
    alignment, COMIF's IAA and UPA) is a head that the task
    (`NextItemModel`, `MaskedItemModel`) calls in `compute_loss` during
    training, with the outputs of the training call on the same batch, and
    whose losses it adds to the next-item loss. The head holds the
    objective's weights and hyper-parameters (its loss weights included);
    the backbone holds none of them. `tfsidefuse.models.build_model` gives
    each model the head of its paper (`registry.HEADS`).

    A head reads the tensors of the step from its call arguments only: the
    backbone's output dict (which returns what the head needs, e.g. ASIF's
    per-layer streams) and the batch's labels; it may read the backbone's
    weights (item tables, attribute embeddings) and run the backbone again
    (COMIF's negative passes), which is why the backbone is an argument.

    Subclasses implement `call`; a head whose initial weights depend on the
    item-feature tables overrides `set_item_feature_tables`. Heads do not
    cast their inputs (`autocast=False`): each loss keeps the dtypes of the
    backbone's outputs and computes in float32 where it needs to.

    Args:
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        outputs: the dict the backbone returned for the batch.
        inputs: the input dict the backbone received (sanitized; for the
            Cloze task, the masked inputs).
        labels: the labels of the batch's slots, `[batch, seq_len]` or
            `[batch]`, `0` where a slot has no target (for the Cloze task, the
            original ids at the masked slots).
        backbone: the backbone that returned `outputs`.

    Returns:
        dict name -> float32 scalar loss, weight included; empty for none.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)

    def build(self, input_shape: Any = None) -> None:
        """Creates the head's weights (none here); the task builds its heads with the model."""
        self.built = True

    def set_item_feature_tables(self, tables: Mapping[str, Any]) -> None:
        """Receives the item-feature tables that the backbone was given (nothing to do here).

        Args:
            tables: dict feature name -> integer array `[num_items,
                max_values]`, one per item feature of the backbone.
        """

    def call(self, outputs: dict[str, Any], inputs: dict[str, Any], labels: Any, backbone: Any) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement `call(outputs, inputs, labels, backbone)`.")
