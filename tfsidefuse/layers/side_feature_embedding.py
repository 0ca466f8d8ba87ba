"""Embedding of a categorical side feature, pooling multi-valued attributes."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfsidefuse.data.schema import PAD_ID
from tfsidefuse.layers._checks import check_choice, check_positive_int, get_initializer

POOLINGS = ("sum", "mean", "max")


@keras.saving.register_keras_serializable(package="tfsidefuse")
class SideFeatureEmbedding(keras.layers.Layer):
    """Embeds categorical feature ids, pooling over the values of a multi-valued one.

    For single-valued ids `[batch, seq_len]` the output is `mu_t * E[tau_t]`,
    with `mu_t = [tau_t != 0]`, so that padding gives the zero vector. For
    multi-valued ids `[batch, seq_len, m]` the `m` values `tau_1..tau_m` of a
    slot are pooled over the valid ones (`mu_k = [tau_k != 0]`,
    `c = sum_k mu_k`):

    - `"sum"`: `a_t = sum_k mu_k E[tau_k]`;
    - `"mean"`: `a_t = (sum_k mu_k E[tau_k]) / (c + 1e-8)`;
    - `"max"`: element-wise max over the valid values; the invalid ones are
      pushed down by `1e9` and a slot without valid value gives zeros.

    A slot whose values are all padding therefore gives the zero vector with
    every pooling.

    Args:
        vocab_size: number of ids of the feature, including the padding id 0
            and the OOV id 1.
        embedding_dim: embedding width.
        pooling: `"sum"`, `"mean"` or `"max"`; used for multi-valued ids only.
        embeddings_initializer: initializer of the table; `None` gives
            `N(0, 0.02)`, as RecBole.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: int ids `[batch, seq_len]` (single-valued) or
            `[batch, seq_len, m]` (multi-valued); `0` is padding.

    Returns:
        Feature vectors `[batch, seq_len, embedding_dim]`.

    Example:

    ```python
    layer = SideFeatureEmbedding(vocab_size=30, embedding_dim=8, pooling="mean")
    categories = np.array([[[0, 0], [4, 7], [5, 0]]])  # [1, 3, 2]
    vectors = layer(categories)  # [1, 3, 8]; slot 0 is all zeros
    ```

    Reference:
        Xie et al., "Decoupled Side Information Fusion for Sequential
        Recommendation", SIGIR 2022 (attribute pooling of the official code).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        pooling: str = "mean",
        embeddings_initializer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("embedding_dim", embedding_dim)
        check_choice("pooling", pooling, POOLINGS)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.pooling = pooling
        self.embeddings_initializer = get_initializer(embeddings_initializer)

    def build(self, inputs_shape: Any = None) -> None:
        # A serialized copy gives a fresh instance, so an unseeded initializer
        # shared between layers still draws new values for each table.
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocab_size, self.embedding_dim),
            initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        self.built = True

    def call(self, inputs: Any) -> Any:
        ids = ops.cast(inputs, "int32")
        valid = ops.expand_dims(ops.not_equal(ids, PAD_ID), axis=-1)
        vectors = ops.take(self.embeddings, ids, axis=0)
        if len(inputs.shape) == 2:
            return vectors * ops.cast(valid, vectors.dtype)
        if self.pooling == "max":
            pushed_down = ops.where(valid, vectors, vectors - 1e9)
            any_valid = ops.any(valid, axis=-2)
            return ops.where(any_valid, ops.max(pushed_down, axis=-2), ops.zeros_like(vectors[..., 0, :]))
        summed = ops.sum(vectors * ops.cast(valid, vectors.dtype), axis=-2)
        if self.pooling == "sum":
            return summed
        # Counts are whole numbers, so dividing by max(c, 1) equals dividing by
        # c + 1e-8 in float32 and stays finite in float16, where 1e-8 is zero.
        count = ops.sum(ops.cast(valid, summed.dtype), axis=-2)
        return summed / ops.maximum(count, 1.0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "embedding_dim": self.embedding_dim,
                "pooling": self.pooling,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            }
        )
        return config
