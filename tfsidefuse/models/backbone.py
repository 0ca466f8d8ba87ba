"""Base class of the backbones: input dict -> hidden states."""

from __future__ import annotations

from typing import Any

import keras

from tfsidefuse.data.schema import NUM_RESERVED_IDS
from tfsidefuse.layers._checks import check_positive_int


class Backbone(keras.layers.Layer):
    """Base class of every backbone: maps the input dict to hidden states.

    A backbone is where a paper decides how side information enters the
    network. It reads `inputs["item_ids"]` (left-padded `[batch, seq_len]`,
    `0` = padding, the most recent item in the last slot) and whichever other
    input features it uses, ignores the others, and returns hidden states
    `[batch, seq_len, hidden_dim]` whose slot `t` summarises the sequence up to
    `t` (causal models) or the whole sequence (bidirectional models).

    `NextItemModel` turns any backbone into a next-item recommender: it scores
    hidden states against `item_table()` and adds the `auxiliary_losses`.

    Subclasses create their tables in `build()`; the default `item_table()`
    expects the item embedding to be stored as `self.item_embedding` (an
    `ItemEmbedding`).

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1.
        hidden_dim: width `d` of the hidden states.
        max_len: the longest sequence the backbone is built for.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict of tensors with at least `"item_ids"`.
        training: bool, whether dropout is active.
    """

    def __init__(self, num_items: int, hidden_dim: int, max_len: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_items, int) or num_items <= NUM_RESERVED_IDS:
            raise ValueError(
                f"`num_items` must be an int > {NUM_RESERVED_IDS} (it counts the padding and OOV ids). "
                f"Received: num_items={num_items!r}"
            )
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("max_len", max_len)
        self.num_items = num_items
        self.hidden_dim = hidden_dim
        self.max_len = max_len

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement `call(inputs, training=None)`.")

    def item_table(self) -> Any:
        """The `[num_items, hidden_dim]` matrix that hidden states are scored against."""
        return self.item_embedding.embeddings

    @property
    def auxiliary_losses(self) -> list[tuple[str, float]]:
        """The backbone's auxiliary objectives as `(name, weight)` pairs.

        Empty for plain next-item backbones. A backbone with auxiliary
        objectives computes each of them in `call` during training and adds
        `weight * value` with `self.add_loss`, so that Keras adds it to the
        main loss in `fit`; this property declares them (for logging and
        configuration).
        """
        return []

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_items": self.num_items, "hidden_dim": self.hidden_dim, "max_len": self.max_len})
        return config
