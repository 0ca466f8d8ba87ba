"""Training on several devices or hosts with the engines Keras already runs on.

``training.distribution`` picks one:

- ``none`` (default): one device.
- ``mirrored``: one host, several devices (its GPUs, or the ``devices`` listed), with
  ``tf.distribute.MirroredStrategy`` on the TensorFlow backend and ``keras.distribution.DataParallel`` over the
  host's devices on the JAX backend.
- ``multi_worker``: several hosts (or processes), configured by the ``TF_CONFIG`` environment variable of each
  worker: ``tf.distribute.MultiWorkerMirroredStrategy`` on TensorFlow; on JAX, ``keras.distribution.initialize``
  (``jax.distributed``, with worker 0, or the ``chief`` task, as the coordinator) and then ``DataParallel`` over
  every device of every process. Keras' own ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` /
  ``KERAS_DISTRIBUTION_NUM_PROCESSES`` / ``KERAS_DISTRIBUTION_PROCESS_ID`` variables work too under JAX.

Under JAX a step runs on the whole global batch at once, sharded along its first axis over the devices, which
must divide it: every batch of the pipeline (training, validation, evaluation) is padded with empty rows to a
multiple of the device count (:func:`tfsidefuse.data.pipeline.pad_batches`). An empty row has no labelled slot:
it adds nothing to the loss, its gradient or the ranking metrics, so every user is still counted exactly once.

``training.batch_size`` is the global batch in every case: ``tf.distribute`` splits each batch of the pipeline
over the replicas, and the next-item loss is the mean over the labelled slots of the whole global batch
(:mod:`tfsidefuse.replicas`), so a distributed step computes the same update as one process on the same batch.
Under ``multi_worker`` the training data is split by files (each worker reads its own shard files, see
:func:`file_shard`) or by batches (every worker reads the same stream of batches and keeps its part of each:
tf.data's ``DATA`` sharding, set by :func:`tfsidefuse.data.pipeline.make_dataset`); evaluation always splits by
batches. Either way every training example, and every user of an evaluation, is seen exactly once per pass over
the workers together.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import keras

from tfsidefuse.config import DISTRIBUTIONS
from tfsidefuse.errors import ConfigError


def check_distribution(name: str | None, devices: list[str] | None = None) -> None:
    """Refuses a distribution the active backend or environment cannot run, before anything is built.

    Raises:
        ConfigError: naming ``training.distribution`` and why.
    """
    name = name or "none"
    if name not in DISTRIBUTIONS:
        raise ConfigError(f"training.distribution must be one of {list(DISTRIBUTIONS)}, got {name!r}")
    backend = keras.backend.backend()
    if name != "none" and backend not in ("tensorflow", "jax"):
        raise ConfigError(
            f"training.distribution={name!r} runs on the TensorFlow and JAX backends, but KERAS_BACKEND is "
            f"{backend!r}; on this backend training uses one device (training.distribution: none)"
        )
    if devices is not None and name != "mirrored":
        raise ConfigError(f"training.devices applies to distribution 'mirrored', not {name!r}")
    if name == "multi_worker" and not _keras_cluster_variables():
        cluster_spec(required=True)
    if name == "mirrored" and devices is not None and backend == "jax":
        known = keras.distribution.list_devices()
        unknown = [d for d in devices if d not in known]
        if unknown:
            raise ConfigError(f"training.devices: {unknown} are not devices of this host; it has {known}")


def _keras_cluster_variables() -> bool:
    """Whether Keras' own multi-process variables (``KERAS_DISTRIBUTION_*``) describe the cluster: under JAX,
    when they are set."""
    return keras.backend.backend() == "jax" and bool(os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"))


def cluster_spec(required: bool = False) -> dict | None:
    """The parsed ``TF_CONFIG`` of this worker (``{"cluster": ..., "task": ...}``), or None when unset.

    Raises:
        ConfigError: ``TF_CONFIG`` is malformed, or missing when ``required``.
    """
    text = os.environ.get("TF_CONFIG")
    if not text:
        if required:
            raise ConfigError(
                "training.distribution='multi_worker' needs the TF_CONFIG environment variable on every worker, "
                'e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                '"index": 0}} (docs/scaling.md)'
            )
        return None
    try:
        spec = json.loads(text)
        workers = spec["cluster"]["worker"]
        task_type, index = spec["task"]["type"], int(spec["task"]["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"TF_CONFIG is not a valid cluster spec ({err}): {text!r}") from err
    if not isinstance(workers, list) or not workers:
        raise ConfigError(f"TF_CONFIG: cluster.worker must be a non-empty list of host:port, got {workers!r}")
    members = spec["cluster"].get(task_type)
    if not isinstance(members, list) or not 0 <= index < len(members):
        raise ConfigError(f"TF_CONFIG: task {task_type!r} index {index} is not in the cluster {spec['cluster']}")
    return spec


def is_chief(name: str) -> bool:
    """Whether this process writes the run directory: always, except a non-chief worker of ``multi_worker``.

    The chief is the ``chief`` task when the cluster has one, else worker 0 (TensorFlow's convention).
    """
    if name != "multi_worker":
        return True
    if _keras_cluster_variables():
        return int(os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "0")) == 0
    spec = cluster_spec(required=True)
    task_type, index = spec["task"]["type"], int(spec["task"]["index"])
    if "chief" in spec["cluster"]:
        return task_type == "chief"
    return task_type == "worker" and index == 0


def file_shard(training_config: Any, prepared: Any) -> tuple[int, int] | None:
    """``(workers, index)`` when this worker reads only its own training shard files (``training.input_sharding``).

    Only a ``multi_worker`` run on the TensorFlow backend does, with ``files``, or ``auto`` when the prepared
    dataset has at least one training shard per worker. Workers whose shards hold fewer batches than another's
    are fed empty batches by ``tf.distribute`` until every worker is through its files, so that no collective
    step is left waiting.

    Raises:
        ConfigError: ``files`` on another distribution or backend, or with fewer shards than workers.
    """
    t = training_config
    if t.input_sharding == "data":
        return None
    eligible = t.distribution == "multi_worker" and keras.backend.backend() == "tensorflow"
    if not eligible:
        if t.input_sharding == "files":
            raise ConfigError(
                "training.input_sharding='files' applies to training.distribution='multi_worker' on the TensorFlow "
                f"backend (distribution is {t.distribution!r}, backend {keras.backend.backend()!r})"
            )
        return None
    spec = cluster_spec(required=True)
    members = [(kind, i) for kind, i, _ in _cluster_members(spec)]  # the chief first, then the workers
    task = (spec["task"]["type"], int(spec["task"]["index"]))
    workers = len(members)
    shards = len(prepared.files("train"))
    if shards >= workers:
        return workers, members.index(task)
    if t.input_sharding == "files":
        raise ConfigError(
            f"training.input_sharding='files' needs at least one training shard per worker: the prepared dataset "
            f"has {shards} (dataset.num_shards) for {workers} workers; prepare it with more shards or use 'data'"
        )
    return None


def all_reduce_dense(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Make ``optimizer`` turn sparse (``tf.IndexedSlices``) gradients dense before they are all-reduced.

    For a run whose workers read their own files (:func:`file_shard`): ``MultiWorkerMirroredStrategy`` all-gathers
    sparse gradients, and on TensorFlow 2.21 that all-gather (``CollectiveGatherV2``) crashes a worker with SIGSEGV
    once one worker steps on an empty batch (its files are through) while another still has rows. A dense
    gradient is all-reduced as any kernel's. The update is the same (Adam on the summed gradient); ``LazyAdam``
    then updates every row. The optimizer's config is unchanged, so a saved model does not record this.
    """
    import tensorflow as tf

    apply = optimizer.apply

    def apply_dense(grads, trainable_variables=None):
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        return apply(grads, trainable_variables)

    optimizer.apply = apply_dense
    return optimizer


def worker_dir(run_dir: str, name: str) -> str:
    """Where a non-chief worker keeps its own backup and logs: ``<run_dir>/.workers/<task>-<index>``."""
    if _keras_cluster_variables():
        return os.path.join(run_dir, ".workers", f"process-{int(os.environ['KERAS_DISTRIBUTION_PROCESS_ID'])}")
    task = cluster_spec(required=True)["task"]
    return os.path.join(run_dir, ".workers", f"{task['type']}-{int(task['index'])}")


def _cluster_members(spec: dict) -> list[tuple[str, int, str]]:
    """The processes of a ``TF_CONFIG`` cluster in JAX's process order: the chief first, then the workers."""
    members = []
    for task_type in ("chief", "worker"):
        members += [(task_type, i, address) for i, address in enumerate(spec["cluster"].get(task_type, []))]
    return members


def _initialize_jax_cluster() -> None:
    """Joins this process to the JAX cluster of ``TF_CONFIG`` (or of Keras' own variables): the first member is
    the coordinator; each process's id is its place in :func:`_cluster_members`."""
    import jax

    # Collectives between CPU processes go over gloo (GPUs use NCCL whatever this says).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if _keras_cluster_variables():
        keras.distribution.initialize()
        return
    spec = cluster_spec(required=True)
    members = _cluster_members(spec)
    me = (spec["task"]["type"], int(spec["task"]["index"]))
    process_id = [(t, i) for t, i, _ in members].index(me)
    keras.distribution.initialize(job_addresses=members[0][2], num_processes=len(members), process_id=process_id)


def make_strategy(name: str, devices: list[str] | None = None) -> Any:
    """The engine of ``mirrored`` / ``multi_worker``: a ``tf.distribute`` strategy on TensorFlow, a
    ``keras.distribution.DataParallel`` on JAX; None for ``none``."""
    check_distribution(name, devices)
    if name not in ("mirrored", "multi_worker"):
        return None
    if keras.backend.backend() == "jax":
        if name == "multi_worker":
            _initialize_jax_cluster()
        # Every process feeds its own part of each global batch (`tfsidefuse.data.pipeline.pad_batches`), so
        # Keras' own sharding of the dataset (which needs a plain `batch` to find the batch size) is off.
        return keras.distribution.DataParallel(
            devices=devices or keras.distribution.list_devices(), auto_shard_dataset=False
        )
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MultiWorkerMirroredStrategy()


def replica_count(strategy: Any = None) -> int:
    """How many replicas compute each step: the strategy's (the devices of a ``DataParallel``), else 1."""
    if strategy is None:
        return 1
    if isinstance(strategy, keras.distribution.DataParallel):
        return int(strategy.device_mesh.devices.size)
    return int(strategy.num_replicas_in_sync)


@contextlib.contextmanager
def scope(strategy: Any = None) -> Iterator[None]:
    """The context in which the model of a run is built and trained: the strategy's scope (its variables are
    mirrored on every replica), or nothing on one device."""
    if strategy is None:
        yield
        return
    with strategy.scope():
        yield


def build_state(model: keras.Model, eval_dataset: Any, strategy: Any) -> None:
    """Builds the compiled loss and metrics of a model for a ``tf.distribute`` strategy, from the first batch of
    ``eval_dataset`` (read only under a strategy).

    Before every ``fit`` and ``evaluate`` under a strategy, Keras builds them from a sample batch that it first
    averages over the replicas: the integer item ids become floats, and replicas holding batches of different
    sizes (a batch of 31 over two replicas) fail the average. Built here once from an evaluation batch of the
    pipeline (``(history, target)``, the shapes the ranking metrics take), that step has nothing left to do and
    is skipped for this model.
    """
    if strategy is None or isinstance(strategy, keras.distribution.DataParallel):
        return  # JAX builds from the global batch, which it does not average
    batch = next(iter(eval_dataset.take(1)))
    with strategy.scope():
        model._symbolic_build(data_batch=batch)  # Keras' own build of the compiled loss and metrics
    model._maybe_symbolic_build = _already_built
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras averages a step's logs over the workers along axis 0, which a scalar of a worker with one device
        # does not have; the logs of a step get that axis (the epoch's logs are read from the metrics themselves).
        model.train_step = _logs_with_leading_axis(model.train_step)
        model.test_step = _logs_with_leading_axis(model.test_step)


def _logs_with_leading_axis(step: Any) -> Any:
    def step_with_axis(data: Any) -> Any:
        logs = step(data)
        return {name: keras.ops.reshape(value, (-1,)) for name, value in logs.items()}

    return step_with_axis


def _already_built(iterator: Any = None, data_batch: Any = None) -> None:
    """Stands in for Keras' pre-step build of a model whose compiled state :func:`build_state` built."""
