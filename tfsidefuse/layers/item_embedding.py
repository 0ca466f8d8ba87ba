"""Item id embedding, tied to the output scoring layer."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfsidefuse.layers._checks import check_positive_int, get_initializer
from tfsidefuse.layers.rows import take_rows


@keras.saving.register_keras_serializable(package="tfsidefuse")
class ItemEmbedding(keras.layers.Layer):
    """Item id embedding table, shared between the input and the output layer.

    Forward, it looks up `E[ids]`. In reverse, it scores hidden states against
    every item of the table, `logits = h E^T`, as the tied read-out of SASRec
    and its descendants. Reverse logits are always float32.

    The row of the padding id 0 is an ordinary (random) row, as in RecBole:
    padded slots are masked out by attention, never by the embedding.

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1.
        hidden_dim: embedding width `d`.
        embeddings_initializer: initializer of the table; `None` gives
            `N(0, 0.02)`, as RecBole.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: with `reverse=False`, int ids of any shape `[...]`; with
            `reverse=True`, hidden states `[..., hidden_dim]`.
        reverse: bool. Look up (`False`, output `[..., hidden_dim]`) or score
            against all items (`True`, output `[..., num_items]`, float32).

    Example:

    ```python
    embedding = ItemEmbedding(num_items=100, hidden_dim=8)
    vectors = embedding(np.array([[0, 2, 3]]))  # [1, 3, 8]
    logits = embedding(vectors, reverse=True)  # [1, 3, 100]
    ```

    Reference:
        Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.
    """

    def __init__(
        self,
        num_items: int,
        hidden_dim: int,
        embeddings_initializer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_items", num_items)
        check_positive_int("hidden_dim", hidden_dim)
        self.num_items = num_items
        self.hidden_dim = hidden_dim
        self.embeddings_initializer = get_initializer(embeddings_initializer)

    def build(self, inputs_shape: Any = None) -> None:
        # A serialized copy gives a fresh instance, so an unseeded initializer
        # shared between layers still draws new values for each table.
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.num_items, self.hidden_dim),
            initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        self.built = True

    def call(self, inputs: Any, reverse: bool = False) -> Any:
        if reverse:
            logits = ops.matmul(inputs, ops.transpose(ops.cast(self.embeddings, inputs.dtype)))
            return ops.cast(logits, "float32")
        return take_rows(self.embeddings, ops.cast(inputs, "int32"))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "num_items": self.num_items,
                "hidden_dim": self.hidden_dim,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            }
        )
        return config
