import numpy as np
from helpers import np_attention_mask

from tfsidefuse.layers import attention_mask, padding_mask

ITEM_IDS = np.array([[0, 0, 5, 7, 9], [3, 4, 5, 6, 2], [0, 0, 0, 0, 8]])


def test_padding_mask():
    np.testing.assert_array_equal(padding_mask(ITEM_IDS), ITEM_IDS != 0)


def test_causal_mask_hand_built():
    expected = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 1],
        ],
        dtype=bool,
    )
    mask = np.asarray(attention_mask(padding_mask(ITEM_IDS), causal=True))
    assert mask.shape == (3, 5, 5)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask[0], expected)
    np.testing.assert_array_equal(mask, np_attention_mask(ITEM_IDS, causal=True))


def test_bidirectional_mask():
    mask = np.asarray(attention_mask(padding_mask(ITEM_IDS), causal=False))
    assert mask.shape == (3, 5, 5)
    np.testing.assert_array_equal(mask[0], np.tile([False, False, True, True, True], (5, 1)))
    np.testing.assert_array_equal(mask, np_attention_mask(ITEM_IDS, causal=False))


def test_every_real_query_attends_itself():
    for causal in (True, False):
        mask = np.asarray(attention_mask(padding_mask(ITEM_IDS), causal=causal))
        diagonal = np.diagonal(mask, axis1=1, axis2=2)
        np.testing.assert_array_equal(diagonal, ITEM_IDS != 0)
