"""LazyAdam: Adam on the rows a step gathered, exactly Adam where every row has a gradient."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfsidefuse
from tfsidefuse.config import ConfigError
from tfsidefuse.training import distribution, trainer
from tfsidefuse.training.optimizers import LazyAdam

pytestmark = pytest.mark.tensorflow_only  # IndexedSlices gradients exist under TensorFlow only

START = np.arange(15, dtype="float32").reshape(5, 3) / 10.0


def _loss(rows):
    # Each gathered row pulled towards 1 with its own weight, so that duplicate rows get different gradients.
    weights = tf.range(1, tf.shape(rows)[0] + 1, dtype="float32")[:, None]
    return tf.reduce_sum(tf.square(rows - 1.0) * weights)


def _train(optimizer, steps, densify=False):
    """Applies one step per list of gathered row ids to a [5, 3] table; returns the table and the optimizer."""
    table = keras.Variable(START, name="embeddings")
    optimizer.build([table])
    for ids in steps:
        with tf.GradientTape() as tape:
            loss = _loss(tf.gather(table.value, ids))
        gradient = tape.gradient(loss, table.value)
        assert isinstance(gradient, tf.IndexedSlices)  # the lazy path is the one under test
        optimizer.apply_gradients([(tf.convert_to_tensor(gradient) if densify else gradient, table)])
    return table.numpy(), optimizer


def _lazy_adam_reference(steps, lr, weight_decay=0.0, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Numpy lazy Adam: rows without a gradient keep their values and moments."""
    w, m, v = START.astype("float64").copy(), np.zeros((5, 3)), np.zeros((5, 3))
    for t, ids in enumerate(steps, start=1):
        g = np.zeros((5, 3))
        for k, i in enumerate(ids):
            g[i] += 2.0 * (w[i] - 1.0) * (k + 1)
        rows = sorted(set(ids))
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        for i in rows:
            m[i] = beta_1 * m[i] + (1 - beta_1) * g[i]
            v[i] = beta_2 * v[i] + (1 - beta_2) * g[i] ** 2
            w[i] = w[i] - lr * weight_decay * w[i] - alpha * m[i] / (np.sqrt(v[i]) + epsilon)
    return w, m, v


STEPS_EVERY_ROW = [[0, 1, 2, 3, 4, 1], [4, 3, 2, 1, 0, 0], [2, 0, 1, 4, 3, 3]]
STEPS_SOME_ROWS = [[1, 2, 2], [2, 3], [3, 3, 0]]


@pytest.mark.parametrize("weight_decay", [None, 0.2])
def test_equals_adam_on_the_dense_gradient_when_every_row_has_one(weight_decay):
    lazy, _ = _train(LazyAdam(0.1, weight_decay=weight_decay), STEPS_EVERY_ROW)
    adam, _ = _train(keras.optimizers.Adam(0.1, weight_decay=weight_decay), STEPS_EVERY_ROW, densify=True)
    np.testing.assert_allclose(lazy, adam, rtol=0, atol=1e-6)
    assert np.abs(lazy - START).max(axis=1).min() > 1e-3  # every row moved


def test_all_reduce_dense_applies_a_sparse_gradient_as_the_dense_one():
    """What file-sharded workers apply (docs/scaling.md): the dense gradient. Keras' Adam given the sparse one of
    duplicate rows would differ (its second moment sums the squares of the slices)."""
    sparse, _ = _train(keras.optimizers.Adam(0.1), STEPS_EVERY_ROW)
    dense, _ = _train(keras.optimizers.Adam(0.1), STEPS_EVERY_ROW, densify=True)
    wrapped = distribution.all_reduce_dense(keras.optimizers.Adam(0.1))
    config = wrapped.get_config()
    table, _ = _train(wrapped, STEPS_EVERY_ROW)
    np.testing.assert_allclose(table, dense, rtol=0, atol=1e-6)
    assert np.abs(sparse - dense).max() > 1e-4  # the two applications do differ here
    assert wrapped.get_config() == config


@pytest.mark.parametrize("weight_decay", [0.0, 0.2])
def test_rows_without_a_gradient_keep_their_values_and_moments(weight_decay):
    table, optimizer = _train(LazyAdam(0.1, weight_decay=weight_decay or None), STEPS_SOME_ROWS)
    want_w, want_m, want_v = _lazy_adam_reference(STEPS_SOME_ROWS, 0.1, weight_decay)
    np.testing.assert_allclose(table, want_w, rtol=0, atol=1e-5)
    np.testing.assert_allclose(optimizer._momentums[0].numpy(), want_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optimizer._velocities[0].numpy(), want_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table[4], START[4])  # never gathered
    # Row 1 had a gradient at step 1 only: Adam keeps moving it with its momentum, LazyAdam does not.
    one_step, _ = _train(LazyAdam(0.1, weight_decay=weight_decay or None), STEPS_SOME_ROWS[:1])
    np.testing.assert_array_equal(table[1], one_step[1])
    adam, _ = _train(keras.optimizers.Adam(0.1, weight_decay=weight_decay or None), STEPS_SOME_ROWS, densify=True)
    assert np.abs(adam[1] - one_step[1]).max() > 1e-3


def test_dense_gradients_take_adamw_with_its_exclusions():
    def run(optimizer):
        kernel = keras.Variable(START, name="kernel")
        bias = keras.Variable(np.ones(3, "float32"), name="bias")
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        optimizer.build([kernel, bias])
        x = tf.constant(np.linspace(-1, 1, 10, dtype="float32").reshape(2, 5))
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(tf.matmul(x, kernel.value) + bias.value))
            optimizer.apply_gradients(zip(tape.gradient(loss, [kernel.value, bias.value]), [kernel, bias]))
        return kernel.numpy(), bias.numpy()

    got, want = run(LazyAdam(0.05, weight_decay=0.3)), run(keras.optimizers.AdamW(0.05, weight_decay=0.3))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)


def test_config_round_trip_and_argument_errors():
    optimizer = LazyAdam(learning_rate=0.01, weight_decay=0.05, use_ema=True, ema_momentum=0.9)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is LazyAdam and restored is not optimizer
    assert restored.decoupled_weight_decay == 0.05 and restored.weight_decay is None
    assert restored.get_config() == optimizer.get_config()
    assert tfsidefuse.LazyAdam is LazyAdam
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)
    with pytest.raises(ValueError, match="weight_decay=-1"):
        LazyAdam(weight_decay=-1)


def test_trainer_option(tmp_path):
    from tfsidefuse.config import load_config

    def config(**training):
        overrides = {"dataset.prepared_dir": str(tmp_path / "data"), "training.run_dir": str(tmp_path / "run")}
        return load_config("demo/sasrec", {**overrides, **{f"training.{k}": v for k, v in training.items()}})

    optimizer = trainer.make_optimizer(config(optimizer="lazy_adam", weight_decay=0.1).training, keras.Sequential())
    assert isinstance(optimizer, LazyAdam) and optimizer.decoupled_weight_decay == 0.1
    assert type(trainer.make_optimizer(config().training, keras.Sequential())) is keras.optimizers.Adam
    with pytest.raises(ConfigError, match="training.optimizer must be one of .* got 'sgd'"):
        config(optimizer="sgd")


def test_sampled_softmax_run_with_lazy_adam_trains_and_reloads(tmp_path):
    from test_trainer import small_config

    from tfsidefuse.evaluation import evaluate_most_popular

    config = small_config(tmp_path, optimizer="lazy_adam", loss="sampled_softmax", num_negatives=50, epochs=4)
    result = trainer.train(config)
    model = keras.models.load_model(f"{config.training.run_dir}/model.keras")
    assert type(model.optimizer) is LazyAdam
    popular = evaluate_most_popular(trainer.prepare(config), "valid")
    assert result.metrics["valid"]["ndcg@20"] > popular["ndcg@20"]
