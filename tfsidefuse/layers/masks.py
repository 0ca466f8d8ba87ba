"""Padding and attention masks for left-padded item sequences.

Sequences are left-padded with the padding id 0 (see `tfsidefuse.data.schema`),
so the most recent item sits in the last slot. Masks are boolean: `True` marks
what may be attended to.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from tfsidefuse.data.schema import PAD_ID


def padding_mask(item_ids: Any) -> Any:
    """Boolean mask of the real (non-padding) slots of an id sequence.

    Args:
        item_ids: int tensor `[batch, seq_len]` (or any shape) of ids, `0` = padding.

    Returns:
        A bool tensor of the same shape, `True` where `item_ids != 0`.
    """
    return ops.not_equal(item_ids, PAD_ID)


def attention_mask(padding_mask: Any, causal: bool = True) -> Any:
    """Which keys each query may attend to.

    Query `i` may attend key `j` iff key `j` is a real item and, when `causal`,
    `j <= i`. Query rows at padded slots may end up with no allowed key; their
    outputs are never read.

    Args:
        padding_mask: bool tensor `[batch, seq_len]`, `True` at real items.
        causal: `True` for left-to-right (SASRec-style) attention, `False` for
            bidirectional (BERT-style) attention.

    Returns:
        A bool tensor `[batch, seq_len, seq_len]` indexed `[batch, query, key]`.

    Example:

    ```python
    ids = np.array([[0, 5, 7]])
    attention_mask(padding_mask(ids))[0]
    # [[False, False, False],
    #  [False,  True, False],
    #  [False,  True,  True]]
    ```
    """
    key_mask = ops.expand_dims(ops.cast(padding_mask, "bool"), axis=1)
    batch_size, seq_len = ops.shape(padding_mask)[0], ops.shape(padding_mask)[1]
    if causal:
        positions = ops.arange(seq_len)
        lower_triangle = ops.greater_equal(ops.expand_dims(positions, 1), ops.expand_dims(positions, 0))
        return ops.logical_and(key_mask, ops.expand_dims(lower_triangle, 0))
    return ops.broadcast_to(key_mask, (batch_size, seq_len, seq_len))
