"""Base class of the backbones: input dict -> dict of outputs (hidden states and what the heads read)."""

from __future__ import annotations

import inspect
from typing import Any

import keras

from tfsidefuse.data.schema import NUM_RESERVED_IDS
from tfsidefuse.layers._checks import check_positive_int


class Backbone(keras.layers.Layer):
    """Base class of every backbone: maps the input dict to a dict of outputs.

    A backbone is where a paper decides how side information enters the
    network. It reads `inputs["item_ids"]` (left-padded `[batch, seq_len]`,
    `0` = padding, the most recent item in the last slot) and whichever other
    input features it uses, ignores the others, and returns a dict (as
    keras-hub backbones do) with the hidden states `"sequence_output"`,
    `[batch, seq_len, hidden_dim]`, whose slot `t` summarises the sequence up
    to `t` (causal models) or the whole sequence (bidirectional models), plus
    the intermediate tensors that a model's auxiliary heads read (ASIF's
    per-layer streams, for instance). It holds no task head and no loss.

    `NextItemModel` turns any backbone into a next-item recommender: it scores
    the hidden states against `item_table()` and adds the losses of its
    auxiliary heads.

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

    Returns:
        dict with at least `"sequence_output"`, `[batch, seq_len, hidden_dim]`.
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

    @property
    def supports_last_position_only(self) -> bool:
        """Whether `call` takes `last_position_only`.

        With `last_position_only=True` such a backbone returns the hidden
        state of the last slot alone, `"sequence_output"` `[batch, 1,
        hidden_dim]`, equal to the
        last slot of the full call (its last layer then runs the query,
        feed-forward and normalisation for that slot only). `NextItemModel`
        passes it for last-position scoring.
        """
        return "last_position_only" in inspect.signature(self.call).parameters

    def item_table(self) -> Any:
        """The `[num_items, hidden_dim]` matrix that hidden states are scored against."""
        return self.item_embedding.embeddings

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_items": self.num_items, "hidden_dim": self.hidden_dim, "max_len": self.max_len})
        return config
