"""The shared attention core on a tiny case (1 sequence, 2 heads of width 2, 3 positions), values worked by hand."""

import math

import keras
import numpy as np
import pytest
from helpers import np_softmax
from keras import ops

from tfsidefuse.layers import attention_core
from tfsidefuse.layers.attention_core import (
    MASK_VALUE,
    attend,
    disallowed_mask,
    dot_product_logits,
    merge_heads,
    split_heads,
)

# [1, 3, 4]: position t holds 4t .. 4t + 3; head 0 reads features 0-1, head 1 features 2-3.
X = np.arange(12, dtype="float32").reshape(1, 3, 4)
X_HEADS = np.array(
    [
        [
            [[0, 1], [4, 5], [8, 9]],
            [[2, 3], [6, 7], [10, 11]],
        ]
    ],
    dtype="float32",
)
# Causal: query i attends keys 0..i.
CAUSAL = np.tril(np.ones((3, 3), dtype=bool))[None]
# Head 0: row 1 has logits (0, ln 3), row 2 (0, 0, ln 2); head 1: all zero (uniform over the allowed keys).
# The masked-out upper triangle holds large logits, which the mask must still remove.
LOGITS = np.array(
    [
        [
            [[0.0, 7.0, 9.0], [0.0, math.log(3.0), 8.0], [0.0, 0.0, math.log(2.0)]],
            [[0.0, 5.0, 5.0], [0.0, 0.0, 5.0], [0.0, 0.0, 0.0]],
        ]
    ],
    dtype="float32",
)
EXPECTED_PROBABILITIES = np.array(
    [
        [
            [[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.25, 0.25, 0.5]],
            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]],
        ]
    ],
    dtype="float32",
)
# Value heads [1, 2, 3, 2].
VALUE = np.array(
    [
        [
            [[1, 0], [0, 1], [2, 2]],
            [[3, 0], [0, 3], [6, 6]],
        ]
    ],
    dtype="float32",
)
# P V per head, heads concatenated per position:
# head 0: (1, 0), 0.25 (1, 0) + 0.75 (0, 1), 0.25 (1, 0) + 0.25 (0, 1) + 0.5 (2, 2);
# head 1: (3, 0), 0.5 (3, 0) + 0.5 (0, 3), (3 + 0 + 6, 0 + 3 + 6) / 3.
EXPECTED_CONTEXT = np.array(
    [[[1.0, 0.0, 3.0, 0.0], [0.25, 0.75, 1.5, 1.5], [1.25, 1.25, 3.0, 3.0]]],
    dtype="float32",
)


def _attend(logits=LOGITS, disallowed=None, value=VALUE, dropout=0.0, training=False, compute_dtype="float32"):
    context, probabilities = attend(
        ops.convert_to_tensor(logits),
        disallowed,
        ops.convert_to_tensor(value),
        keras.layers.Dropout(dropout, seed=1),
        training,
        compute_dtype,
    )
    return ops.convert_to_numpy(context), ops.convert_to_numpy(probabilities)


def test_mask_value_is_shared():
    from tfsidefuse.layers.self_attention import MASK_VALUE as reexported

    assert MASK_VALUE == reexported == -10000.0
    assert attention_core.MASK_VALUE is reexported


def test_split_heads_by_hand_and_as_numpy():
    heads = ops.convert_to_numpy(split_heads(ops.convert_to_tensor(X), 2, 2))
    assert heads.shape == (1, 2, 3, 2)
    np.testing.assert_array_equal(heads, X_HEADS)
    np.testing.assert_array_equal(heads, X.reshape(1, 3, 2, 2).transpose(0, 2, 1, 3))


def test_merge_heads_by_hand_and_round_trip():
    merged = ops.convert_to_numpy(merge_heads(ops.convert_to_tensor(X_HEADS)))
    np.testing.assert_array_equal(merged, X)
    np.testing.assert_array_equal(merged, X_HEADS.transpose(0, 2, 1, 3).reshape(1, 3, 4))
    # split and merge are inverse to each other, for any head split of the width.
    x = np.random.default_rng(0).normal(size=(2, 5, 12)).astype("float32")
    for num_heads, head_width in ((1, 12), (2, 6), (3, 4), (12, 1)):
        heads = split_heads(ops.convert_to_tensor(x), num_heads, head_width)
        assert tuple(heads.shape) == (2, num_heads, 5, head_width)
        np.testing.assert_array_equal(ops.convert_to_numpy(merge_heads(heads)), x)


def test_dot_product_logits_by_hand():
    # Head 0: q = (1, 0), (0, 1), (1, 1) against the same keys: q_i . k_j; head 1: twice head 0's keys.
    query = np.array([[[[1, 0], [0, 1], [1, 1]], [[1, 0], [0, 1], [1, 1]]]], dtype="float32")
    key = np.array([[[[1, 0], [0, 1], [1, 1]], [[2, 0], [0, 2], [2, 2]]]], dtype="float32")
    expected = np.array(
        [[[[1, 0, 1], [0, 1, 1], [1, 1, 2]], [[2, 0, 2], [0, 2, 2], [2, 2, 4]]]],
        dtype="float32",
    )
    logits = dot_product_logits(ops.convert_to_tensor(query), ops.convert_to_tensor(key))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    np.testing.assert_array_equal(ops.convert_to_numpy(logits), expected)
    scaled = dot_product_logits(ops.convert_to_tensor(query), ops.convert_to_tensor(key), scale=2.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(scaled), expected / 2.0)
    # Different query and key lengths: [1, 2, 3, 2] x [1, 2, 2, 2] -> [1, 2, 3, 2].
    short = dot_product_logits(ops.convert_to_tensor(query), ops.convert_to_tensor(key[:, :, :2]))
    np.testing.assert_array_equal(ops.convert_to_numpy(short), expected[..., :2])


def test_dot_product_logits_dtype():
    query = ops.convert_to_tensor(X_HEADS, dtype="float16")
    assert keras.backend.standardize_dtype(dot_product_logits(query, query).dtype) == "float32"
    kept = dot_product_logits(query, query, scale=math.sqrt(2.0), dtype=None)
    assert keras.backend.standardize_dtype(kept.dtype) == "float16"
    np.testing.assert_allclose(
        ops.convert_to_numpy(kept).astype("float32"),
        (X_HEADS @ X_HEADS.transpose(0, 1, 3, 2)) / math.sqrt(2.0),
        rtol=2e-3,
    )


def test_disallowed_mask_by_hand():
    disallowed = ops.convert_to_numpy(disallowed_mask(CAUSAL))
    assert disallowed.dtype == np.float32
    np.testing.assert_array_equal(disallowed, [[[[0, 1, 1], [0, 0, 1], [0, 0, 0]]]])
    # 0/1 masks are read as bool.
    np.testing.assert_array_equal(ops.convert_to_numpy(disallowed_mask(CAUSAL.astype("int32"))), disallowed)
    assert disallowed_mask(None) is None


def test_attend_with_a_mask_by_hand():
    context, probabilities = _attend(disallowed=disallowed_mask(CAUSAL))
    assert context.shape == (1, 3, 4) and probabilities.shape == (1, 2, 3, 3)
    # Disallowed slots get exactly zero probability despite their large logits.
    assert np.all(probabilities[np.broadcast_to(~CAUSAL[:, None], probabilities.shape)] == 0.0)
    np.testing.assert_allclose(probabilities, EXPECTED_PROBABILITIES, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(context, EXPECTED_CONTEXT, rtol=1e-6, atol=1e-6)


def test_attend_matches_numpy_softmax():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(2, 2, 3, 3)).astype("float32")
    value = rng.normal(size=(2, 2, 3, 2)).astype("float32")
    mask = np.stack([CAUSAL[0], np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0]], dtype=bool)])
    context, probabilities = _attend(logits, disallowed_mask(mask), value)
    expected = np_softmax(logits.astype("float64") + (1.0 - mask[:, None]) * MASK_VALUE)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    expected_context = (expected @ value).transpose(0, 2, 1, 3).reshape(2, 3, 4)
    np.testing.assert_allclose(context, expected_context, atol=1e-5)
    # A bool mask gives the same values as the float one, and no mask a plain softmax.
    bool_context, bool_probabilities = _attend(logits, ops.convert_to_tensor(~mask[:, None]), value)
    np.testing.assert_array_equal(bool_probabilities, probabilities)
    np.testing.assert_array_equal(bool_context, context)
    _, unmasked = _attend(logits, None, value)
    np.testing.assert_allclose(unmasked, np_softmax(logits.astype("float64")), atol=1e-6)


def test_a_masked_out_key_column_gets_no_weight():
    # Key 2 (a padded slot) is disallowed for every query, and has by far the largest logits.
    logits = np.zeros((1, 2, 3, 3), dtype="float32")
    logits[..., 2] = 50.0
    mask = np.ones((1, 3, 3), dtype=bool)
    mask[:, :, 2] = False
    value = VALUE.copy()
    context, probabilities = _attend(logits, disallowed_mask(mask), value)
    np.testing.assert_allclose(probabilities[..., 2], 0.0, atol=1e-12)
    np.testing.assert_allclose(probabilities[..., :2], 0.5, rtol=1e-6)
    # Changing the masked value changes nothing.
    value[:, :, 2] = 1000.0
    np.testing.assert_allclose(_attend(logits, disallowed_mask(mask), value)[0], context, atol=1e-6)
    # Per head, the mean of the two allowed value rows: (0.5, 0.5) and (1.5, 1.5).
    np.testing.assert_allclose(context, np.tile([[0.5, 0.5, 1.5, 1.5]], (1, 3, 1)), rtol=1e-6)


def test_dropout_acts_after_the_returned_probabilities():
    disallowed = disallowed_mask(CAUSAL)
    context, probabilities = _attend(disallowed=disallowed, dropout=0.5, training=True)
    np.testing.assert_allclose(probabilities, EXPECTED_PROBABILITIES, rtol=1e-6, atol=1e-7)
    assert not np.allclose(context, EXPECTED_CONTEXT)
    # Inference ignores the dropout.
    np.testing.assert_allclose(_attend(disallowed=disallowed, dropout=0.5)[0], EXPECTED_CONTEXT, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("compute_dtype", ["float16", "bfloat16"])
def test_attend_casts_to_the_compute_dtype(compute_dtype):
    value = ops.convert_to_tensor(VALUE, dtype=compute_dtype)
    context, probabilities = attend(
        ops.convert_to_tensor(LOGITS),
        disallowed_mask(CAUSAL),
        value,
        keras.layers.Dropout(0.0, dtype=compute_dtype),
        False,
        compute_dtype,
    )
    assert keras.backend.standardize_dtype(probabilities.dtype) == compute_dtype
    assert keras.backend.standardize_dtype(context.dtype) == compute_dtype
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.cast(context, "float32")), EXPECTED_CONTEXT, rtol=1e-2, atol=1e-2
    )
