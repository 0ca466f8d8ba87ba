import json
import os

import keras
import numpy as np
import pytest

from tfsidefuse.config import ConfigError, RunConfig
from tfsidefuse.data.pipeline import make_dataset
from tfsidefuse.errors import PreparedDataError
from tfsidefuse.evaluation import evaluate_model, evaluate_most_popular
from tfsidefuse.training import trainer
from tfsidefuse.training.callbacks import ValidationReduceLROnPlateau, cosine_learning_rate, default_callbacks


def small_config(tmp_path, **training) -> RunConfig:
    return RunConfig.from_dict(
        {
            "dataset": {
                "source": "demo",
                "prepared_dir": str(tmp_path / "data"),
                "max_len": 20,
                "num_shards": 2,
                "demo": {"num_users": 800, "num_items": 200, "seed": 1},
            },
            "model": {
                "name": "sasrec",
                "hidden_dim": 32,
                "num_layers": 1,
                "num_heads": 2,
                "ff_dim": 64,
                "dropout": 0.1,
                "attention_dropout": 0.1,
            },
            "training": {
                "run_dir": str(tmp_path / "run"),
                "epochs": 6,
                "batch_size": 64,
                "learning_rate": 5e-3,
                "patience": 6,
                "verbose": 0,
                **training,
            },
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trained")
    config = small_config(tmp_path)
    return config, trainer.train(config)


def test_fit_on_demo_beats_most_popular(trained):
    config, result = trained
    popular = evaluate_most_popular(config.dataset.prepared_dir, "test")
    assert result.metrics["test"]["ndcg@10"] > popular["ndcg@10"] + 0.05
    assert result.metrics["test"]["hr@10"] > popular["hr@10"]


def test_run_directory_artifacts(trained):
    config, result = trained
    run = config.training.run_dir
    for name in ("model.keras", "config.yaml", "metrics.json", "history.csv"):
        assert os.path.exists(os.path.join(run, name)), name
    assert os.listdir(os.path.join(run, "logs"))  # TensorBoard event files
    assert not os.path.exists(os.path.join(run, "backup"))  # removed after a finished run
    with open(os.path.join(run, "metrics.json")) as fh:
        saved = json.load(fh)
    assert saved["test"] == pytest.approx(result.metrics["test"])
    assert saved["epochs_run"] == 6 and 1 <= saved["best_epoch"] <= 6
    stats = trainer.PreparedDataset.open(config.dataset.prepared_dir).stats
    assert saved["train_sequences"] == 6 * stats["train_sequences"] > 0
    # The best epoch's weights were restored: the validation metric equals the best one logged.
    best = max(result.history["val_ndcg@20"])
    assert result.metrics["valid"]["ndcg@20"] == pytest.approx(best, abs=1e-6)


def test_saved_model_reloads_with_equal_predictions(trained):
    config, result = trained
    model = trainer.load_trained(config.training.run_dir)
    x, _ = next(iter(make_dataset(config.dataset.prepared_dir, "test", batch_size=32)))
    np.testing.assert_allclose(model.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-5)
    reloaded = evaluate_model(model, config.dataset.prepared_dir, "test")
    assert reloaded["ndcg@20"] == pytest.approx(result.metrics["test"]["ndcg@20"], abs=1e-6)
    rows = trainer.evaluate(config, "test")
    assert set(rows) == {"sasrec (test)", "most-popular (test)"}


def test_prepare_is_reused_and_refuses_a_different_config(trained, tmp_path):
    config, _ = trained
    stamp = os.path.join(config.dataset.prepared_dir, "manifest.json")
    before = os.path.getmtime(stamp)
    trainer.prepare(config)
    assert os.path.getmtime(stamp) == before
    other = small_config(tmp_path)
    other.dataset.prepared_dir = config.dataset.prepared_dir
    other.dataset.max_len = 10
    with pytest.raises(PreparedDataError, match=r"different dataset config \(changed: \['dataset.max_len'\]\)"):
        trainer.prepare(other)


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def kill_after_epoch(config, epoch, monkeypatch):
    """Trains a config until it is interrupted at the end of an epoch (0-based), leaving its backup."""
    original = trainer.default_callbacks
    monkeypatch.setattr(trainer, "default_callbacks", lambda t, **kw: [*original(t, **kw), StopAfter(epoch)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config)
    monkeypatch.setattr(trainer, "default_callbacks", original)
    assert os.path.isdir(os.path.join(config.training.run_dir, "backup"))


def test_killed_run_resumes_from_backup(tmp_path, monkeypatch):
    config = small_config(tmp_path, epochs=3)
    kill_after_epoch(config, 1, monkeypatch)
    # The backup belongs to this config: another one must not continue it.
    other = small_config(tmp_path, epochs=3, learning_rate=1e-2)
    with pytest.raises(ConfigError, match=r"different config \(changed: \['training.learning_rate'\]\)"):
        trainer.train(other)
    result = trainer.train(config)
    # Epochs 1 and 2 were done before the kill; only epoch 3 runs again, numbered as in one run.
    assert result.metrics["epochs_run"] == 3
    with open(os.path.join(config.training.run_dir, "history.csv")) as fh:
        epochs = [line.split(",")[0] for line in fh.read().splitlines()[1:]]
    assert epochs == ["0", "1", "2"]


def test_overwrite_starts_a_killed_run_of_another_config_over(tmp_path, monkeypatch):
    kill_after_epoch(small_config(tmp_path, epochs=2), 0, monkeypatch)
    other = small_config(tmp_path, epochs=2, learning_rate=1e-2)
    result = trainer.train(other, overwrite=True)
    # Started over: both epochs of the new config ran, none continued from the killed run's backup.
    assert result.metrics["epochs_run"] == 2
    with open(os.path.join(other.training.run_dir, "history.csv")) as fh:
        assert [line.split(",")[0] for line in fh.read().splitlines()[1:]] == ["0", "1"]
    with open(os.path.join(other.training.run_dir, "config.yaml")) as fh:
        assert "0.01" in fh.read()


def test_prefix_objective_trains_and_extra_callbacks_run_after_the_configs(tmp_path):
    class Seen(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.logs = []

        def on_epoch_end(self, epoch, logs=None):
            self.logs.append((epoch, sorted(logs)))

    seen = Seen()
    config = small_config(tmp_path, objective="prefix", epochs=2, eval_every=2)
    result = trainer.train(config, evaluate_test=False, callbacks=[seen])
    # Epoch 1 has no validation; epoch 2 has, and the history callback's logs reach the extra one.
    assert [epoch for epoch, _ in seen.logs] == [0, 1]
    assert "val_ndcg@20" not in seen.logs[0][1] and "val_ndcg@20" in seen.logs[1][1]
    assert result.model.objective == "prefix" and not result.model.labels_per_position
    assert (
        result.metrics["train_sequences"]
        == 2 * trainer.PreparedDataset.open(config.dataset.prepared_dir).stats["train_targets"]
    )
    assert "test" not in result.metrics


@pytest.mark.parametrize(
    "options",
    # One bucket under XLA: every batch has the same padded shape, so the step compiles once.
    [{"jit_compile": True, "length_buckets": [20]}, {"length_buckets": None}, {"mixed_precision": True}],
)
def test_speed_options_train_to_the_same_kind_of_model(tmp_path, options):
    config = small_config(tmp_path, epochs=1, **options)
    result = trainer.train(config, evaluate_test=False)
    assert result.model.jit_compile == options.get("jit_compile", False)
    expected_dtype = "mixed_float16" if options.get("mixed_precision") else "float32"
    assert result.model.backbone.dtype_policy.name == expected_dtype
    # The global policy is left alone.
    assert keras.config.dtype_policy().name == "float32"
    assert result.metrics["valid"]["hr@20"] > 0.1


@pytest.mark.parametrize("optimizer", ["adam", "lazy_adam"])
def test_weight_decay_spares_biases_and_layer_norms(tmp_path, optimizer):
    config = small_config(tmp_path, weight_decay=0.5, learning_rate=0.1, optimizer=optimizer)
    model = trainer.create_model(config, trainer.prepare(config))
    optimizer = model.optimizer
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    # Zero gradients: Adam's own step is 0, only the decoupled decay w <- w - lr * wd * w moves a variable.
    optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in variables])
    kinds = set()
    for v, old in zip(variables, before):
        if v.name in trainer.NOT_DECAYED:
            np.testing.assert_array_equal(v.numpy(), old, err_msg=v.path)
        else:
            np.testing.assert_allclose(v.numpy(), old * (1 - 0.1 * 0.5), rtol=1e-6, err_msg=v.path)
        kinds.add(v.name)
    assert {"embeddings", "kernel", "bias", "gamma", "beta"} <= kinds
    # No decay by default (the papers' Adam).
    assert trainer.create_model(small_config(tmp_path), trainer.prepare(config)).optimizer.weight_decay is None


def _lr_model(learning_rate):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return model


def test_learning_rate_reduction_counts_validations_only():
    callback = ValidationReduceLROnPlateau(monitor="val_ndcg@20", mode="max", factor=0.5, patience=2, verbose=0)
    callback.set_model(_lr_model(0.1))
    callback.on_train_begin()
    lrs = []
    # Validations at epochs 0, 2, 3, 4 (1 has none, as with eval_every > 1): 0.5 best, then two without improvement.
    for epoch, logs in enumerate([{"val_ndcg@20": 0.5}, {}, {"val_ndcg@20": 0.4}, {"val_ndcg@20": 0.5}, {}]):
        callback.on_epoch_end(epoch, logs)
        lrs.append(logs["learning_rate"])
    # Logged: the rate each epoch trained with. The reduction comes after epoch 3 (the second validation without
    # improvement); had epoch 1 counted, it would have come after epoch 2.
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.1, 0.1, 0.05], rtol=1e-6)
    assert float(callback.model.optimizer.learning_rate) == pytest.approx(0.05)


def test_learning_rate_reduction_is_wired_to_the_monitored_metric(tmp_path):
    config = small_config(tmp_path, monitor="hr@10", reduce_lr_factor=0.3, reduce_lr_patience=2, min_learning_rate=1e-4)
    [reduce] = [c for c in default_callbacks(config.training) if isinstance(c, ValidationReduceLROnPlateau)]
    assert (reduce.monitor, reduce.factor, reduce.patience, reduce.min_lr) == ("val_hr@10", 0.3, 2, 1e-4)
    default = default_callbacks(small_config(tmp_path).training)
    assert not any(isinstance(c, ValidationReduceLROnPlateau) for c in default)
    result = trainer.train(small_config(tmp_path, epochs=2, reduce_lr_factor=0.5), evaluate_test=False)
    with open(os.path.join(config.training.run_dir, "history.csv")) as fh:
        header = fh.readline().strip().split(",")
    assert "learning_rate" in header
    assert result.history["learning_rate"][0] == pytest.approx(5e-3)


def test_cosine_learning_rate_by_hand():
    # Half a cosine period from 0.01 to 0.001 over 4 epochs: cos(pi e / 4) = 1, 0.7071, 0, -0.7071.
    got = [cosine_learning_rate(e, 4, 0.01, 0.001) for e in range(5)]
    expected = [0.01, 0.001 + 0.009 * (1 + 0.5**0.5) / 2, 0.0055, 0.001 + 0.009 * (1 - 0.5**0.5) / 2, 0.001]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_cosine_schedule_sets_every_epoch_rate_and_resumes_at_its_epoch(tmp_path):
    scheduler_type = keras.callbacks.LearningRateScheduler
    assert not any(isinstance(c, scheduler_type) for c in default_callbacks(small_config(tmp_path).training))
    config = small_config(tmp_path, epochs=3, lr_schedule="cosine", min_learning_rate=1e-3)
    result = trainer.train(config, evaluate_test=False)
    expected = [cosine_learning_rate(e, 3, 5e-3, 1e-3) for e in range(3)]
    np.testing.assert_allclose(result.history["learning_rate"], expected, rtol=1e-5)
    assert expected[0] > expected[1] > expected[2] > 1e-3
    # A resumed run (BackupAndRestore) starts its scheduler at the epoch it resumes from.
    [scheduler] = [c for c in default_callbacks(config.training) if isinstance(c, scheduler_type)]
    scheduler.set_model(_lr_model(5e-3))
    scheduler.on_epoch_begin(2)
    assert float(scheduler.model.optimizer.learning_rate) == pytest.approx(expected[2])


class WeightRecorder(keras.callbacks.Callback):
    """Copies of the model's weights after every training step and at every epoch's end, with the optimizer's
    averages (which hold the raw weights while the averaged ones are swapped in)."""

    def __init__(self):
        super().__init__()
        self.steps, self.epoch_ends, self.begin = [], [], None

    def _weights(self):
        return [v.numpy().copy() for v in self.model.trainable_variables]

    def _averages(self):
        # Built with the optimizer: before the first step of a fresh run there are none.
        return [v.numpy().copy() for v in getattr(self.model.optimizer, "_model_variables_moving_average", [])]

    def on_train_begin(self, logs=None):
        self.begin = (self._weights(), self._averages())

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(self._weights())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append((self._weights(), self._averages()))


def test_weight_average_is_validated_selected_and_saved(tmp_path):
    momentum = 0.8
    config = small_config(tmp_path, epochs=3, ema_momentum=momentum)
    recorder = WeightRecorder()
    result = trainer.train(config, evaluate_test=False, callbacks=[recorder])
    assert result.model.optimizer.use_ema and result.model.optimizer.ema_momentum == momentum
    # The average by hand, in float64: the first step's weights, then a <- m a + (1 - m) w after every step.
    average = [w.astype("float64") for w in recorder.steps[0]]
    per_epoch = len(recorder.steps) // 3
    averages = []
    for step, weights in enumerate(recorder.steps[1:], start=1):
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, weights)]
        if (step + 1) % per_epoch == 0:
            averages.append(average)
    assert len(averages) == 3
    for epoch, (in_model, _) in enumerate(recorder.epoch_ends):
        # At every epoch's end the model holds the average.
        for got, want in zip(in_model, averages[epoch]):
            np.testing.assert_allclose(got, want, atol=1e-5)
    for epoch, (in_model, raw) in enumerate(recorder.epoch_ends[:-1]):
        # The raw weights (the epoch's last step) wait in the optimizer until the next epoch trains on; after the
        # last epoch Keras keeps only the average. (It swaps by adding and subtracting in place: float32 rounding.)
        for got, want in zip(raw, recorder.steps[(epoch + 1) * per_epoch - 1]):
            np.testing.assert_allclose(got, want, atol=1e-6)
        assert any(not np.allclose(a, w, atol=1e-4) for a, w in zip(in_model, raw))
    # The run keeps the best epoch's average, and its validation metric is the one logged for that epoch.
    best = result.metrics["best_epoch"] - 1
    for got, want in zip(result.model.trainable_variables, recorder.epoch_ends[best][0]):
        np.testing.assert_array_equal(got.numpy(), want)
    assert result.metrics["valid"]["ndcg@20"] == pytest.approx(result.history["val_ndcg@20"][best], abs=1e-6)
    saved = trainer.load_trained(config.training.run_dir)
    for got, want in zip(saved.trainable_variables, recorder.epoch_ends[best][0]):
        np.testing.assert_array_equal(got.numpy(), want)


def test_killed_run_with_weight_average_resumes_from_the_raw_weights(tmp_path, monkeypatch):
    config = small_config(tmp_path, epochs=3, ema_momentum=0.8)
    before_kill = WeightRecorder()
    original = trainer.default_callbacks
    monkeypatch.setattr(trainer, "default_callbacks", lambda t, **kw: [*original(t, **kw), before_kill, StopAfter(1)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config)
    monkeypatch.setattr(trainer, "default_callbacks", original)
    resumed = WeightRecorder()
    trainer.train(config, evaluate_test=False, callbacks=[resumed])
    # The backup was written before the average was swapped in: training goes on from the raw weights of epoch 2,
    # with their average in the optimizer.
    averaged, raw = before_kill.epoch_ends[1]
    weights, averages = resumed.begin
    for got, want in zip(weights, raw):
        np.testing.assert_allclose(got, want, atol=1e-6)
    for got, want in zip(averages, averaged):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert any(not np.allclose(w, a, atol=1e-4) for w, a in zip(weights, averages))
    assert len(resumed.epoch_ends) == 1
