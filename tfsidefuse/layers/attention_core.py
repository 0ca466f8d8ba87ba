"""The multi-head attention core shared by the attention layers: heads, logits, masked softmax, context.

Shapes use `b` for the batch, `h` for the heads, `w` for the head width,
`l_q` / `l_k` for the query / key lengths. Each layer keeps its own
projections and its own scaling and fusion of the logits; these functions
hold what every layer does the same way:

```python
query = split_heads(query_dense(x), num_heads, head_width)  # [b, h, l_q, w]
key = split_heads(key_dense(x), num_heads, head_width)  # [b, h, l_k, w]
logits = dot_product_logits(query, key, scale=math.sqrt(head_width))  # float32 [b, h, l_q, l_k]
value = split_heads(value_dense(x), num_heads, head_width)
context, probabilities = attend(
    logits, disallowed_mask(attention_mask), value, dropout_layer, training, compute_dtype
)  # [b, l_q, h * w], [b, h, l_q, l_k]
```
"""

from __future__ import annotations

from typing import Any

from keras import ops

# RecBole's additive mask constant: small enough to zero a softmax entry in
# float32, large enough to stay finite in float16.
MASK_VALUE = -10000.0


def split_heads(x: Any, num_heads: int, head_width: int) -> Any:
    """Splits the last axis into heads: `[b, l, h * w] -> [b, h, l, w]`.

    Args:
        x: `[batch, length, num_heads * head_width]`.
        num_heads: number of heads `h`.
        head_width: width `w` of each head.

    Returns:
        `[batch, num_heads, length, head_width]`.
    """
    batch_size, length = ops.shape(x)[0], ops.shape(x)[1]
    x = ops.reshape(x, (batch_size, length, num_heads, head_width))
    return ops.transpose(x, (0, 2, 1, 3))


def merge_heads(x: Any) -> Any:
    """Concatenates the heads, the inverse of `split_heads`: `[b, h, l, w] -> [b, l, h * w]`.

    The number of heads and their width are read from the static shape.

    Args:
        x: `[batch, num_heads, length, head_width]`, with static
            `num_heads` and `head_width`.

    Returns:
        `[batch, length, num_heads * head_width]`.
    """
    num_heads, head_width = x.shape[1], x.shape[3]
    if num_heads is None or head_width is None:
        raise ValueError(
            f"`merge_heads` needs a static number of heads and head width. Received shape: {tuple(x.shape)}"
        )
    x = ops.transpose(x, (0, 2, 1, 3))
    batch_size, length = ops.shape(x)[0], ops.shape(x)[1]
    return ops.reshape(x, (batch_size, length, num_heads * head_width))


def dot_product_logits(query: Any, key: Any, scale: float | None = None, dtype: str | None = "float32") -> Any:
    """Per-head dot products `Q K^T`: `[b, h, l_q, w] x [b, h, l_k, w] -> [b, h, l_q, l_k]`.

    With `scale`, the products are divided by it in the dtype of the inputs,
    then cast to `dtype`: `cast(Q K^T / scale, dtype)`.

    Args:
        query: `[batch, num_heads, query_len, head_width]`.
        key: `[batch, num_heads, key_len, head_width]`.
        scale: optional divisor (e.g. `sqrt(head_width)`); `None` leaves the
            logits unscaled.
        dtype: dtype of the returned logits, `"float32"` by default (a
            softmax in float16 overflows); `None` keeps the inputs' dtype.

    Returns:
        `[batch, num_heads, query_len, key_len]`.
    """
    logits = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))
    if scale is not None:
        logits = logits / ops.cast(scale, logits.dtype)
    if dtype is not None:
        logits = ops.cast(logits, dtype)
    return logits


def disallowed_mask(attention_mask: Any) -> Any:
    """The float32 indicator of the masked-out logits, broadcastable over the heads.

    Args:
        attention_mask: bool (or 0/1) `[b, l_q, l_k]`, `True` where query `i`
            may attend key `j`; or `None`.

    Returns:
        float32 `[b, 1, l_q, l_k]`, `1.0` where attention is not allowed and
        `0.0` elsewhere; `None` when `attention_mask` is `None`.
    """
    if attention_mask is None:
        return None
    allowed = ops.cast(ops.expand_dims(attention_mask, axis=1), "bool")
    return ops.cast(ops.logical_not(allowed), "float32")


def attend(
    logits: Any,
    disallowed: Any,
    value: Any,
    dropout_layer: Any,
    training: bool | None,
    compute_dtype: str,
) -> tuple[Any, Any]:
    """Masked softmax of the logits and the merged context: `merge(Dropout(P) V)`.

    `P = softmax(logits + disallowed * MASK_VALUE)`, computed in float32 and
    cast to `compute_dtype`; the dropout acts on `P` before it weights the
    value heads.

    Args:
        logits: `[b, h, l_q, l_k]` (scaled as the caller wants), float32.
        disallowed: float or bool mask broadcastable to `logits` (e.g.
            `[b, 1, l_q, l_k]` from `disallowed_mask`), `1` / `True` where
            attention is not allowed; `None` allows everything.
        value: the value heads, `[b, h, l_k, w]` (see `split_heads`).
        dropout_layer: the `keras.layers.Dropout` applied to the
            probabilities.
        training: bool, whether dropout is active.
        compute_dtype: dtype of the probabilities and the context.

    Returns:
        A tuple `(context, probabilities)`: `context` `[b, l_q, h * w]`
        (heads merged, before any output projection) and `probabilities`
        `[b, h, l_q, l_k]` (before dropout).
    """
    # Softmax in float32: float16 exponentials of large logits overflow.
    logits = ops.cast(logits, "float32")
    if disallowed is not None:
        logits = logits + ops.cast(disallowed, "float32") * MASK_VALUE
    probabilities = ops.cast(ops.softmax(logits, axis=-1), compute_dtype)
    dropped = dropout_layer(probabilities, training=training)
    return merge_heads(ops.matmul(dropped, value)), probabilities
