"""Training callbacks: validation-aware early stopping, resumption, logs, timing."""

from __future__ import annotations

import json
import math
import os
import time

import keras


class ValidationEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` that waits quietly on epochs without validation.

    With ``validation_freq > 1`` the monitored ``val_*`` metric exists only on
    validation epochs; patience then counts validations, as RecBole's
    ``stopping_step`` does, and the epochs in between are not warned about.
    """

    def get_monitor_value(self, logs):
        if self.monitor not in (logs or {}):
            return None
        return super().get_monitor_value(logs)


class ValidationReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` that, like :class:`ValidationEarlyStopping`, counts validations only.

    Epochs without the monitored ``val_*`` metric (``validation_freq > 1``)
    neither count towards the patience nor warn.
    """

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor in (logs or {}):
            super().on_epoch_end(epoch, logs)
        elif logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def cosine_learning_rate(epoch: int, epochs: int, learning_rate: float, min_learning_rate: float = 0.0) -> float:
    """The learning rate of epoch ``epoch`` (from 0) of a cosine decay over ``epochs`` epochs.

    ``learning_rate`` at epoch 0, falling along half a cosine period towards
    ``min_learning_rate``, which epoch ``epochs`` would reach.
    """
    return min_learning_rate + (learning_rate - min_learning_rate) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore` whose backup files are replaced whole: a process killed while it writes them
    leaves the previous backup (or none), never a truncated weights file that the resumed run cannot read.

    Args:
        backup_dir: the directory of the backup.
    """

    def _save_model(self) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        pid = os.getpid()
        weights_tmp = os.path.join(self.backup_dir, f".latest.tmp-{pid}.weights.h5")
        meta_tmp = os.path.join(self.backup_dir, f".training_metadata.tmp-{pid}.json")
        self.model.save_weights(weights_tmp, overwrite=True)
        with open(meta_tmp, "w") as fh:
            fh.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
        # The weights first: a kill between the two renames resumes the newer weights at the older epoch count.
        os.replace(weights_tmp, self._weights_path)
        os.replace(meta_tmp, self._training_metadata_path)


class TrainingTimer(keras.callbacks.Callback):
    """Measures time spent in training steps (validation excluded).

    Args:
        examples_per_epoch: training examples in one pass over the data.
    """

    def __init__(self, examples_per_epoch: int):
        super().__init__()
        self.examples_per_epoch = examples_per_epoch
        self.train_seconds = 0.0
        self.examples = 0
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def _stop(self):
        if self._start is not None:
            self.train_seconds += time.perf_counter() - self._start
            self.examples += self.examples_per_epoch
            self._start = None

    def on_test_begin(self, logs=None):
        self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self._stop()


#: The CSV log of the epochs of a run in progress (``history.csv`` once the run has finished).
HISTORY_PARTIAL_FILE = "history.partial.csv"


def default_callbacks(training_config, examples_per_epoch: int = 0) -> list[keras.callbacks.Callback]:
    """Early stopping on the validation metric with best-weight restore, the
    optional learning-rate reduction on the same metric or cosine schedule, ``BackupAndRestore``
    (a killed run resumes), TensorBoard and CSV logs, timing.

    With ``ema_momentum``, Keras' ``SwapEMAWeights`` puts the averaged weights
    into the model for validation and at each epoch's end, so that early
    stopping keeps (and the run saves) the averaged weights of the best epoch.
    The backup is written before that swap: a resumed run continues from the
    raw weights, with their average in the optimizer.
    """
    run_dir = training_config.run_dir
    backup_dir = os.path.join(run_dir, "backup")
    resuming = os.path.isdir(backup_dir)
    monitor = f"val_{training_config.monitor}"
    schedule = []
    if training_config.reduce_lr_factor is not None:
        schedule.append(
            ValidationReduceLROnPlateau(
                monitor=monitor,
                mode="max",
                factor=training_config.reduce_lr_factor,
                patience=training_config.reduce_lr_patience,
                min_delta=0.0,
                min_lr=training_config.min_learning_rate,
                verbose=1,
            )
        )
    if training_config.lr_schedule == "cosine":
        epochs, lr, min_lr = training_config.epochs, training_config.learning_rate, training_config.min_learning_rate
        # Keras' scheduler sets the rate at each epoch's start (a resumed run continues at its epoch) and logs it.
        schedule.append(
            keras.callbacks.LearningRateScheduler(lambda epoch, _: cosine_learning_rate(epoch, epochs, lr, min_lr))
        )
    averaging = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if training_config.ema_momentum else []
    return [
        TrainingTimer(examples_per_epoch),
        *schedule,
        AtomicBackupAndRestore(backup_dir),
        *averaging,
        ValidationEarlyStopping(
            monitor=monitor,
            mode="max",
            patience=training_config.patience,
            restore_best_weights=True,
            verbose=1,
        ),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        # The epochs of a run in progress; `train` renames the file to history.csv once the model is saved, so a
        # failed or killed re-run leaves the finished run's history as it was (a resumed run appends to it).
        keras.callbacks.CSVLogger(os.path.join(run_dir, HISTORY_PARTIAL_FILE), append=resuming),
    ]
