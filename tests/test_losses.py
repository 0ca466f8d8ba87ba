import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsidefuse.losses import NextItemCrossEntropy, softmax_cross_entropy

RNG = np.random.default_rng(3)
LOGITS = RNG.normal(size=(2, 4, 7)).astype("float32") * 3
LABELS = np.array([[3, 6, 0, 0], [1, 2, 5, 4]])  # 0: no target (padding)


def _by_hand(logits, labels):
    """Per-row -log softmax(logits)[label] with numpy, 0 where the label is 0."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    rows = -np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    return np.where(labels != 0, rows, 0.0)


def test_tiny_case_by_hand():
    # Two items with logits (0, log 3): p(item 1) = 3/4, so the row's loss is log(4/3); the padding row counts nothing.
    logits = np.array([[0.0, np.log(3.0)], [5.0, -5.0]], "float32")
    labels = np.array([1, 0])
    loss = NextItemCrossEntropy()(labels, logits)
    np.testing.assert_allclose(float(loss), np.log(4.0 / 3.0), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "none"])
def test_equals_keras_sparse_cross_entropy_with_ignored_padding(reduction):
    ours = NextItemCrossEntropy(reduction=reduction)(LABELS, LOGITS)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0, reduction=reduction)
    by_hand = _by_hand(LOGITS, LABELS)
    expected = {"sum_over_batch_size": by_hand.sum() / 6, "sum": by_hand.sum(), "none": by_hand}[reduction]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, keras_loss(LABELS, LOGITS), rtol=1e-5, atol=1e-6)


def test_labels_with_a_trailing_axis_and_sample_weights():
    weights = np.array([[1.0, 2.0, 5.0, 5.0], [0.5, 1.0, 1.0, 3.0]], "float32")
    ours = NextItemCrossEntropy()(LABELS[..., None], LOGITS, sample_weight=weights)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    np.testing.assert_allclose(ours, keras_loss(LABELS, LOGITS, sample_weight=weights), rtol=1e-5)
    # The weights of the padding rows (5.0) count for nothing.
    np.testing.assert_allclose(ours, (_by_hand(LOGITS, LABELS) * weights).sum() / 6, rtol=1e-5)


def test_gradient_is_softmax_minus_one_hot_on_labelled_rows_only():
    logits = tf.Variable(LOGITS)
    with tf.GradientTape() as tape:
        loss = NextItemCrossEntropy()(LABELS, logits)
    grad = tape.gradient(loss, logits).numpy()
    probs = np.exp(LOGITS) / np.exp(LOGITS).sum(axis=-1, keepdims=True)
    expected = (probs - np.eye(7)[LABELS]) * (LABELS != 0)[..., None] / 6
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
    assert np.all(grad[0, 2:] == 0)  # padding rows get no gradient


def test_all_padding_gives_zero_not_nan():
    labels = np.zeros((2, 4), "int64")
    assert float(NextItemCrossEntropy()(labels, LOGITS)) == 0.0


def test_large_logits_stay_finite():
    logits = np.array([[1000.0, 0.0, -1000.0]], "float32")
    np.testing.assert_allclose(float(NextItemCrossEntropy()(np.array([1]), logits)), 1000.0, rtol=1e-6)


def test_serialization_round_trip_and_bad_reduction():
    loss = NextItemCrossEntropy(reduction="sum", name="ce")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, NextItemCrossEntropy)
    assert restored.get_config() == {"reduction": "sum", "name": "ce"}
    np.testing.assert_allclose(restored(LABELS, LOGITS), loss(LABELS, LOGITS))
    with pytest.raises(ValueError, match="reduction.*'mean_with_sample_weight'"):
        NextItemCrossEntropy(reduction="mean_with_sample_weight")


def _keras_value_and_gradient(labels, logits, sample_weight=None):
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)(
            labels, variable, sample_weight=sample_weight
        )
    return loss.numpy(), tape.gradient(loss, variable).numpy()


def _our_value_and_gradient(labels, logits, sample_weight=None, jit_compile=False):
    variable = tf.Variable(logits)

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            loss = NextItemCrossEntropy()(labels, variable, sample_weight=sample_weight)
        return loss, tape.gradient(loss, variable)

    loss, grad = step()
    return loss.numpy(), grad.numpy()


@pytest.mark.parametrize("jit_compile", [False, True])
def test_value_and_gradient_equal_keras_with_weights_in_a_traced_step(jit_compile):
    logits = RNG.normal(size=(3, 5, 11)).astype("float32") * 20  # rows far from uniform
    labels = RNG.integers(0, 11, size=(3, 5))
    labels[0, :2] = 0
    weights = RNG.uniform(0.1, 3.0, size=(3, 5)).astype("float32")
    ours = _our_value_and_gradient(labels, logits, weights, jit_compile=jit_compile)
    expected = _keras_value_and_gradient(labels, logits, weights)
    np.testing.assert_allclose(ours[0], expected[0], rtol=1e-5)
    np.testing.assert_allclose(ours[1], expected[1], rtol=1e-4, atol=1e-7)
    assert np.all(ours[1][0, :2] == 0)


def test_softmax_cross_entropy_gradient_scales_with_the_upstream_per_row():
    logits = tf.Variable(np.array([[1000.0, 0.0, -1000.0], [2.0, 2.0, 2.0]], "float32"))
    upstream = np.array([0.5, -2.0], "float32")  # any sign: the rule does not assume a weight >= 0
    with tf.GradientTape() as tape:
        rows = softmax_cross_entropy(np.array([1, 2]), logits)
        total = tf.reduce_sum(rows * upstream)
    np.testing.assert_allclose(rows.numpy(), [1000.0, np.log(3.0)], rtol=1e-6)
    grad = tape.gradient(total, logits).numpy()
    # Row 0: softmax (1, 0, 0), label 1 -> (1, -1, 0) * 0.5; row 1: (1/3, 1/3, -2/3) * -2.
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0.0], [-2 / 3, -2 / 3, 4 / 3]], rtol=1e-6, atol=1e-7)


def test_softmax_cross_entropy_keeps_the_label_shape():
    logits = RNG.normal(size=(2, 3, 4)).astype("float32")
    labels = np.array([[0, 1, 2], [3, 2, 1]])
    rows = softmax_cross_entropy(labels, logits)
    assert tuple(rows.shape) == (2, 3)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    expected = np.log(np.exp(shifted).sum(-1)) - np.take_along_axis(shifted, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)
