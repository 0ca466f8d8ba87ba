"""Trains a config file in this process, as a worker of a distributed test: ``python distributed_run.py CONFIG``.

``TFSIDEFUSE_TEST_LOGICAL_CPUS=N`` first splits the CPU into N logical devices, so that
``training.distribution: mirrored`` has N replicas on a machine without GPUs.
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

if __name__ == "__main__":
    tfsidefuse.train(tfsidefuse.load_config(sys.argv[1]))
