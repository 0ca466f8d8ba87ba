"""Losses computed by several replicas of one training step.

Under `tf.distribute` (TensorFlow backend, `training.distribution: mirrored | multi_worker`) every replica runs
the step on its part of the global batch and the gradients are summed over the replicas. Keras divides each
replica's mean loss by the number of replicas, which is the global mean only when every replica holds the same
number of labelled slots; with variable-length sequences (the loss at every position, the Cloze masks) they do
not. In a training step (:func:`training_step`) the next-item loss therefore divides each replica's sum by the
labelled slots of the whole global batch (:func:`replica_sum`), and the auxiliary losses, which Keras does not
see, are divided by the number of replicas (:func:`per_replica_share`), as Keras does with its own losses. An
evaluation step keeps each replica's own mean (every evaluation row is labelled), which Keras' loss tracker
weights by the replica's rows into the exact mean of the whole batch.

On one device, and under JAX (whose `keras.distribution.DataParallel` computes the step on the global batch),
both functions leave their value unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import keras
from keras import ops

_IN_TRAINING_STEP = contextvars.ContextVar("tfsidefuse_in_training_step", default=False)


@contextlib.contextmanager
def training_step(training: bool = True) -> Iterator[None]:
    """Marks the loss traced inside the block as a training step's (a no-op when `training` is false)."""
    token = _IN_TRAINING_STEP.set(bool(training))
    try:
        yield
    finally:
        _IN_TRAINING_STEP.reset(token)


def _replica_context() -> Any:
    """The `tf.distribute` replica context of a training step that runs on several replicas, else None."""
    if keras.backend.backend() != "tensorflow" or not _IN_TRAINING_STEP.get():
        return None
    import tensorflow as tf  # the TensorFlow backend is active: it is installed

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def num_replicas() -> int:
    """Replicas that run the current `tf.distribute` step together (1 outside one)."""
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def replica_sum(value: Any) -> Any:
    """The sum of `value` over the replicas of the current step (`value` itself on one replica)."""
    context = _replica_context()
    if context is None:
        return value
    return context.all_reduce("sum", value)


def per_replica_share(value: Any) -> Any:
    """`value / num_replicas()`: a per-replica mean that the summed gradients turn into the mean over replicas."""
    replicas = num_replicas()
    if replicas == 1:
        return value
    return ops.multiply(value, ops.cast(1.0 / replicas, value.dtype))
