"""Distributed training with real processes: MirroredStrategy over two logical CPUs, and two
MultiWorkerMirroredStrategy workers talking over 127.0.0.1, each against one process on the same global batch."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import yaml

import tfsidefuse
from tfsidefuse.config import ConfigError
from tfsidefuse.data.pipeline import make_dataset
from tfsidefuse.evaluation import evaluate_model
from tfsidefuse.training import distribution, trainer

# The workers and devices of these tests meet in collectives: a test running beside them on the same cores can hold
# one participant back past a collective's timeout, so `make test` runs this file alone (see the Makefile).
pytestmark = pytest.mark.processes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RUNNER = os.path.join(HERE, "distributed_run.py")
# Weights after the same steps: one process and two replicas sum the same gradients in another order.
WEIGHT_TOLERANCE = 1e-4
METRIC_TOLERANCE = 1e-4


def config_dict(tmp_path, run_name: str, **training) -> dict:
    return {
        "dataset": {
            "source": "demo",
            "prepared_dir": str(tmp_path / "data"),
            "max_len": 20,
            "num_shards": 2,
            "demo": {"num_users": 600, "num_items": 150, "seed": 3},
        },
        # No dropout: the replicas of a step draw other dropout masks than one process.
        "model": {
            "name": "sasrec",
            "hidden_dim": 32,
            "num_layers": 1,
            "num_heads": 2,
            "ff_dim": 64,
            "dropout": 0.0,
            "attention_dropout": 0.0,
        },
        "training": {
            "run_dir": str(tmp_path / run_name),
            "epochs": 2,
            "batch_size": 64,
            "learning_rate": 3e-3,
            "verbose": 0,
            "seed": 5,
            **training,
        },
    }


def write_config(tmp_path, run_name: str, **training) -> str:
    path = tmp_path / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path, run_name, **training)))
    return str(path)


def environment(**extra) -> dict:
    env = dict(os.environ)
    env.update({"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_worker(config_path: str, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, RUNNER, config_path], env=environment(**env), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def start_workers(config_path: str, ports: list[int], steps_dir=None) -> list[subprocess.Popen]:
    """One worker process per port; with ``steps_dir`` each writes its steps per epoch to ``steps-<i>.json`` there."""
    steps = [
        {"TFSIDEFUSE_TEST_STEPS": os.path.join(steps_dir, f"steps-{i}.json")} if steps_dir else {}
        for i in range(len(ports))
    ]
    return [
        subprocess.Popen(
            [sys.executable, RUNNER, config_path],
            env=environment(TF_CONFIG=tf_config(ports, i), **steps[i]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(len(ports))
    ]


def wait_all(procs: list[subprocess.Popen], timeout: int = 600) -> None:
    deadline = time.time() + timeout
    errors = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        errors.append(err)
    failed = [f"worker {i}: {err[-2500:]}" for i, (p, err) in enumerate(zip(procs, errors)) if p.returncode != 0]
    assert not failed, "\n".join(failed)


def saved_weights(run_dir: str) -> list[np.ndarray]:
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    return model.get_weights()


def metrics_of(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "metrics.json")) as fh:
        return json.load(fh)


def assert_same_run(run_dir: str, reference_dir: str, loss_tolerance: float = METRIC_TOLERANCE) -> None:
    got, want = saved_weights(run_dir), saved_weights(reference_dir)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=WEIGHT_TOLERANCE, rtol=0)
    m, ref = metrics_of(run_dir), metrics_of(reference_dir)
    for split in ("valid", "test"):
        for key in ("hr@10", "ndcg@20", "mrr"):
            assert m[split][key] == pytest.approx(ref[split][key], abs=METRIC_TOLERANCE), (split, key)
        assert m[split]["loss"] == pytest.approx(ref[split]["loss"], abs=loss_tolerance), split
    assert m["epochs_run"] == ref["epochs_run"]
    assert m["train_sequences"] == ref["train_sequences"]  # every training example once per epoch


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: the config trained by one process on one device; the dataset prepared once for all."""
    tmp_path = tmp_path_factory.mktemp("distributed")
    path = write_config(tmp_path, "single")
    trainer.prepare(tfsidefuse.load_config(path))
    run_worker(path)
    return tmp_path, str(tmp_path / "single")


def test_mirrored_over_two_devices_matches_one_process(one_process):
    tmp_path, reference = one_process
    path = write_config(tmp_path, "mirrored", distribution="mirrored", devices=["/cpu:0", "/cpu:1"])
    run_worker(path, TFSIDEFUSE_TEST_LOGICAL_CPUS="2")
    assert_same_run(str(tmp_path / "mirrored"), reference)
    assert metrics_of(str(tmp_path / "mirrored"))["replicas"] == 2


def test_two_workers_on_loopback_match_one_process(one_process):
    tmp_path, reference = one_process
    # `data`: every worker keeps its part of each batch of the whole stream, so the batches are one process's.
    path = write_config(tmp_path, "workers", distribution="multi_worker", input_sharding="data")
    wait_all(start_workers(path, free_ports(2)))
    run_dir = str(tmp_path / "workers")
    assert_same_run(run_dir, reference)
    assert metrics_of(run_dir)["replicas"] == 2
    # Only the chief wrote the run directory; the other worker kept its logs apart and removed its backup.
    assert set(os.listdir(reference)) <= set(os.listdir(run_dir))
    other = os.path.join(run_dir, ".workers", "worker-1")
    assert os.path.isdir(other) and not os.path.exists(os.path.join(other, "model.keras"))
    assert not os.path.exists(os.path.join(other, "metrics.json"))


def test_two_workers_reading_their_own_shard_files(one_process):
    """`input_sharding: files` with three training shards for two workers: each worker reads its own files;
    tf.distribute feeds empty batches to the worker that is through its files first, so the run ends, and
    validation and test still count every user once."""
    tmp_path, reference = one_process
    config = config_dict(tmp_path, "files", distribution="multi_worker", input_sharding="files")
    config["dataset"].update(num_shards=3, prepared_dir=str(tmp_path / "data-3"))
    path = tmp_path / "files.yaml"
    path.write_text(yaml.safe_dump(config))
    prepared = trainer.prepare(tfsidefuse.load_config(str(path)))
    import tensorflow as tf

    sizes = [sum(1 for _ in tf.data.TFRecordDataset(f)) for f in prepared.files("train")]
    # Three files over two workers: one reads two of them, the other one, so their passes differ in length.
    assert len(sizes) == 3 and sizes[0] + sizes[2] > sizes[1], sizes
    wait_all(start_workers(str(path), free_ports(2), steps_dir=str(tmp_path)))
    steps = [json.loads((tmp_path / f"steps-{i}.json").read_text()) for i in range(2)]
    # Each worker's own batches of the global size, split into one part per replica, one part per step; the
    # workers step together until the longer stream is through (the other gets empty batches meanwhile).
    own = [
        sum(1 for _ in make_dataset(prepared, "train", batch_size=64, bucket_boundaries="auto", file_shard=(2, i)))
        for i in range(2)
    ]
    assert own[0] > own[1], own
    assert steps[0] == steps[1] == [2 * own[0]] * 2, (steps, own)
    run_dir = str(tmp_path / "files")
    metrics = metrics_of(run_dir)
    assert metrics["replicas"] == 2 and metrics["epochs_run"] == 2
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    alone = evaluate_model(model, prepared, "test")
    for key in ("hr@10", "ndcg@20", "mrr"):
        assert metrics["test"][key] == pytest.approx(alone[key], abs=METRIC_TOLERANCE), key
    assert metrics["test"]["ndcg@20"] > metrics_of(reference)["test"]["ndcg@20"] / 2  # it trained
    # Each worker's batches came from its own files: not the batches of one process.
    differences = [np.abs(a - b).max() for a, b in zip(model.get_weights(), saved_weights(reference))]
    assert max(differences) > 1e-3


def test_input_sharding_choice(tmp_path, monkeypatch):
    """`auto` reads files when there is a shard per worker; `files` is refused where it cannot apply."""
    prepared = trainer.prepare(tfsidefuse.load_config(write_config(tmp_path, "choice")))  # two shards
    workers = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    cluster = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}}

    def training(**kwargs):
        return tfsidefuse.as_config(config_dict(tmp_path, "choice", **kwargs)).training

    monkeypatch.setenv("TF_CONFIG", json.dumps({**cluster, "cluster": {"worker": cluster["cluster"]["worker"][:2]}}))
    assert distribution.file_shard(training(distribution="multi_worker"), prepared) == (2, 0)
    assert distribution.file_shard(training(distribution="multi_worker", input_sharding="data"), prepared) is None
    assert distribution.file_shard(training(), prepared) is None
    with pytest.raises(ConfigError, match="input_sharding='files' applies to training.distribution='multi_worker'"):
        distribution.file_shard(training(input_sharding="files"), prepared)
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))  # three workers, two shards
    assert distribution.file_shard(training(distribution="multi_worker"), prepared) is None
    with pytest.raises(ConfigError, match="has 2 .* for 3 workers"):
        distribution.file_shard(training(distribution="multi_worker", input_sharding="files"), prepared)
    with pytest.raises(ConfigError, match="training.input_sharding must be one of"):
        training(input_sharding="records").validate()


def test_killed_workers_resume_from_their_backups(one_process):
    """Both workers killed after the first epoch's backup; restarted, they continue at epoch 2 and finish."""
    tmp_path, _ = one_process
    # Six epochs: the backups of the first one stay long enough to be seen before the run would end. Two shards for
    # two workers: `auto` reads files, whose sparse all-gather crashed a worker within six epochs before
    # `distribution.all_reduce_dense` (docs/scaling.md).
    path = write_config(tmp_path, "killed", distribution="multi_worker", epochs=6)
    run_dir = tmp_path / "killed"
    procs = start_workers(path, free_ports(2))
    backups = [run_dir / "backup", run_dir / ".workers" / "worker-1" / "backup"]
    deadline = time.time() + 300
    # Backups are renamed into place whole: their metadata file exists once the first epoch is backed up.
    while not all((b / "training_metadata.json").exists() for b in backups):
        assert time.time() < deadline, "no backup within 300 s"
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll()]
        time.sleep(0.2)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not (run_dir / "metrics.json").exists()
    wait_all(start_workers(path, free_ports(2)))
    metrics = metrics_of(str(run_dir))
    assert metrics["epochs_run"] == 6
    history = (run_dir / "history.csv").read_text().strip().splitlines()
    epochs = [int(line.split(",")[0]) for line in history[1:]]
    # Resumed: the first epoch was not trained again (a fresh start would log epoch 0 twice).
    assert epochs[0] == 0 and epochs[-1] == 5 and len(epochs) == len(set(epochs)), history


def test_configuration_errors_name_the_setting(tmp_path, monkeypatch):
    base = config_dict(tmp_path, "errors")
    base["training"]["distribution"] = "ring"
    with pytest.raises(ConfigError, match="training.distribution"):
        tfsidefuse.as_config(base).validate()
    base["training"].update(distribution="multi_worker", devices=["/cpu:0"])
    with pytest.raises(ConfigError, match="training.devices"):
        tfsidefuse.as_config(base).validate()
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        distribution.check_distribution("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        distribution.check_distribution("multi_worker")
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}})
    )
    with pytest.raises(ConfigError, match="index 3"):
        distribution.check_distribution("multi_worker")


def test_chief_is_worker_zero_or_the_chief_task(monkeypatch):
    workers = ["127.0.0.1:1", "127.0.0.1:2"]
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}})
    )
    assert distribution.is_chief("multi_worker")
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": 1}})
    )
    assert not distribution.is_chief("multi_worker")
    assert distribution.worker_dir("/r", "multi_worker") == os.path.join("/r", ".workers", "worker-1")
    cluster = {"chief": ["127.0.0.1:3"], "worker": workers}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert not distribution.is_chief("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    assert distribution.is_chief("multi_worker")
    assert distribution.is_chief("none") and distribution.is_chief(None)


# ---------------------------------------------------------------------------------------------------------------
# The JAX backend: keras.distribution.DataParallel over two host devices, and two processes on loopback.
# ---------------------------------------------------------------------------------------------------------------


# Under JAX every batch shape is compiled once: random batches padded to max_len keep that to a few shapes.
JAX_TRAINING = {"length_buckets": None}
# Keras weights each evaluation batch's mean loss by its rows, the empty rows that make a batch divisible by the
# devices included (docs/scaling.md): the reported loss, not the ranking metrics, moves in the fourth decimal.
JAX_LOSS_TOLERANCE = 1e-3


def jax_environment(devices: int = 1, **extra) -> dict:
    """A worker under KERAS_BACKEND=jax whose host shows ``devices`` CPU devices to JAX."""
    return {"KERAS_BACKEND": "jax", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}


@pytest.fixture(scope="module")
def one_jax_process(one_process):
    """The JAX reference: the same config trained by one JAX process on one device (the prepared data shared)."""
    tmp_path, _ = one_process
    path = write_config(tmp_path, "jax-single", **JAX_TRAINING)
    run_worker(path, **jax_environment())
    return tmp_path, str(tmp_path / "jax-single")


def test_jax_data_parallel_over_two_devices_matches_one_device(one_jax_process):
    """`mirrored` under JAX: Keras' DataParallel over two host devices; the batches of 64 (and the last ones, of
    any size) are padded to an even number of rows."""
    tmp_path, reference = one_jax_process
    path = write_config(tmp_path, "jax-mirrored", distribution="mirrored", **JAX_TRAINING)
    run_worker(path, **jax_environment(devices=2))
    assert_same_run(str(tmp_path / "jax-mirrored"), reference, loss_tolerance=JAX_LOSS_TOLERANCE)
    assert metrics_of(str(tmp_path / "jax-mirrored"))["replicas"] == 2


def test_two_jax_processes_on_loopback_match_one_process(one_jax_process):
    """`multi_worker` under JAX: jax.distributed over 127.0.0.1 from the same TF_CONFIG, one device each."""
    tmp_path, reference = one_jax_process
    path = write_config(tmp_path, "jax-workers", distribution="multi_worker", **JAX_TRAINING)
    ports = free_ports(2)
    procs = [
        subprocess.Popen(
            [sys.executable, RUNNER, path],
            env=environment(**jax_environment(TF_CONFIG=tf_config(ports, i))),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    wait_all(procs)
    run_dir = str(tmp_path / "jax-workers")
    assert_same_run(run_dir, reference, loss_tolerance=JAX_LOSS_TOLERANCE)
    assert metrics_of(run_dir)["replicas"] == 2
    assert not os.path.exists(os.path.join(run_dir, ".workers", "worker-1", "model.keras"))


def test_pad_batches_adds_empty_rows_that_change_no_metric(tmp_path):
    import tensorflow as tf

    from tfsidefuse.data.pipeline import pad_batches
    from tfsidefuse.metrics import ranking_metrics

    inputs = {"item_ids": tf.constant([[0, 3, 4], [5, 6, 7], [0, 0, 2]]), "rating": tf.constant([[0, 1, 2]] * 3)}
    labels = tf.constant([9, 8, 7])
    ds = tf.data.Dataset.from_tensors((inputs, labels))
    (padded_inputs, padded_labels) = next(iter(pad_batches(ds, 4)))
    np.testing.assert_array_equal(padded_labels.numpy(), [9, 8, 7, 0])
    np.testing.assert_array_equal(padded_inputs["item_ids"].numpy()[3], [0, 0, 0])
    np.testing.assert_array_equal(padded_inputs["rating"].numpy()[:3], inputs["rating"].numpy())
    (same_inputs, same_labels) = next(iter(pad_batches(ds, 3)))
    assert same_labels.shape == (3,) and same_inputs["item_ids"].shape == (3, 3)
    assert pad_batches(ds, 1) is ds
    with pytest.raises(ValueError, match="multiple"):
        pad_batches(ds, 0)
    # The ranking metrics skip the empty rows: the same values with and without them.
    logits = np.random.default_rng(0).normal(size=(3, 10)).astype("float32")
    padded_logits = np.concatenate([logits, np.zeros((1, 10), "float32")])
    for plain, with_pad in zip(ranking_metrics(), ranking_metrics()):
        plain.update_state(labels.numpy(), logits)
        with_pad.update_state(padded_labels.numpy(), padded_logits)
        assert float(plain.result()) == pytest.approx(float(with_pad.result()), abs=1e-7), plain.name


def test_unknown_jax_devices_are_named():
    code = (
        "from tfsidefuse.errors import ConfigError\n"
        "from tfsidefuse.training import distribution\n"
        "distribution.check_distribution('mirrored', ['cpu:0', 'cpu:1'])\n"
        "try:\n"
        "    distribution.check_distribution('mirrored', ['gpu:7'])\n"
        "except ConfigError as err:\n"
        "    print(err)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=environment(**jax_environment(devices=2)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training.devices: ['gpu:7'] are not devices of this host" in proc.stdout
