"""Trains a config file in this process, as a worker of a distributed test: ``python distributed_run.py CONFIG``.

``TFSIDEFUSE_TEST_LOGICAL_CPUS=N`` first splits the CPU into N logical devices, so that
``training.distribution: mirrored`` has N replicas on a machine without GPUs.
``TFSIDEFUSE_TEST_STEPS=PATH`` writes the training steps of each epoch to PATH (a JSON list).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

logical = int(os.environ.get("TFSIDEFUSE_TEST_LOGICAL_CPUS", "1"))
if logical > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical)

import tfsidefuse  # noqa: E402


def step_counter(path):
    """A callback that appends each epoch's number of training steps to the JSON list in ``path``."""
    import json

    import keras

    class Steps(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1

        def on_epoch_end(self, epoch, logs=None):
            counts = json.load(open(path)) if os.path.exists(path) else []
            with open(path, "w") as fh:
                json.dump(counts + [self.steps], fh)

    return Steps()


if __name__ == "__main__":
    steps = os.environ.get("TFSIDEFUSE_TEST_STEPS")
    callbacks = [step_counter(steps)] if steps else None
    tfsidefuse.train(tfsidefuse.load_config(sys.argv[1]), callbacks=callbacks)
