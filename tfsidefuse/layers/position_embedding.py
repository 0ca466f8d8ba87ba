"""Learned absolute position embedding for left-padded sequences."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfsidefuse.layers._checks import check_choice, check_positive_int, get_initializer

#: The two ways of numbering the slots of a window, see `PositionEmbedding`.
POSITION_ORDERS = ("oldest_first", "newest_first")


@keras.saving.register_keras_serializable(package="tfsidefuse")
class PositionEmbedding(keras.layers.Layer):
    """Learned position table indexed from the oldest or the newest real item.

    For a left-padded window with padding mask `m`, the position of slot `t` is,
    with `order="oldest_first"` (the default), `p_t = clip(sum_{j<=t} m_j - 1,
    0, max_len - 1)`: the oldest real item has position 0 whatever the amount
    of left padding, as RecBole's right-padded slot index. With
    `order="newest_first"`, `p_t = clip(sum_{j>=t} m_j - 1, 0, max_len - 1)`:
    the most recent item always has position 0 and position `k` means "`k`
    items before the latest", as the original SASRec's left-padded slot index
    counted from the end. Both are invariant to left padding. The layer returns
    `P[p]`. Padded slots get row 0 (oldest first) or a clipped row (newest
    first); their outputs are never read.

    With `newest_first`, appending an item renumbers every earlier slot, so a
    slot's position tells how many items follow it in the window; changing
    the id of a later item still changes nothing at earlier slots.

    Args:
        max_len: number of rows of the table (the longest window).
        hidden_dim: embedding width `d`.
        embeddings_initializer: initializer of the table; `None` gives
            `N(0, 0.02)`, as RecBole.
        order: `"oldest_first"` or `"newest_first"`, where position 0 is.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        padding_mask: bool tensor `[batch, seq_len]`, `True` at real items.

    Returns:
        Position vectors `[batch, seq_len, hidden_dim]`.

    Example:

    ```python
    layer = PositionEmbedding(max_len=50, hidden_dim=8)
    ids = np.array([[0, 0, 4, 9], [3, 5, 4, 9]])
    positions = layer(ids != 0)  # [2, 4, 8]; slot 2 of row 0 equals slot 0 of row 1
    ```

    Reference:
        Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018;
        the RecBole implementation (Zhao et al., CIKM 2021).
    """

    def __init__(
        self,
        max_len: int,
        hidden_dim: int,
        embeddings_initializer: Any = None,
        order: str = "oldest_first",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("max_len", max_len)
        check_positive_int("hidden_dim", hidden_dim)
        check_choice("order", order, POSITION_ORDERS)
        self.order = order
        self.max_len = max_len
        self.hidden_dim = hidden_dim
        self.embeddings_initializer = get_initializer(embeddings_initializer)

    def build(self, padding_mask_shape: Any = None) -> None:
        # A serialized copy gives a fresh instance, so an unseeded initializer
        # shared between layers still draws new values for each table.
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.max_len, self.hidden_dim),
            initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        self.built = True

    def position_ids(self, padding_mask: Any) -> Any:
        """The table row `p_t` of every slot, int32 `[batch, seq_len]`."""
        real = ops.cast(padding_mask, "int32")
        seen = ops.cumsum(real, axis=1)
        if self.order == "newest_first":
            # Real items at slots >= t: the total minus those before t.
            positions = ops.sum(real, axis=1, keepdims=True) - seen + real - 1
        else:
            positions = seen - 1
        return ops.clip(positions, 0, self.max_len - 1)

    def call(self, padding_mask: Any) -> Any:
        return ops.take(self.embeddings, self.position_ids(padding_mask), axis=0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "max_len": self.max_len,
                "hidden_dim": self.hidden_dim,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
                "order": self.order,
            }
        )
        return config
