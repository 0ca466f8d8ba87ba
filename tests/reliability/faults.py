"""Fault-injection helpers: ways to damage files, snapshots of what must not change, and command runners."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
import yaml

from tfsidefuse.cli import main

#: The workspace's config: paths are relative to the workspace, which is the current directory of each test.
CONFIG = {
    "dataset": {
        "source": "demo",
        "prepared_dir": "data",
        "max_len": 15,
        "num_shards": 2,
        "demo": {"num_users": 300, "num_items": 80, "seed": 3},
    },
    "model": {"name": "sasrec", "hidden_dim": 16, "num_layers": 1, "num_heads": 1, "ff_dim": 32},
    "training": {"run_dir": "run", "epochs": 1, "batch_size": 64, "verbose": 0},
}
SHARD = "part-00000-of-00002.tfrecord"
VENV_BIN = os.path.dirname(sys.executable)


def write_config(path: str, **changes) -> str:
    """Writes the workspace config with ``section.key`` changes."""
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    for key, value in changes.items():
        section, name = key.split(".", 1)
        config[section][name] = value
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh)
    return path


def cli(capsys, *args: str) -> tuple[int, str]:
    """Runs the command line in this process: exit code and stderr."""
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def snapshot(root: str) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (what a failed command must leave as it was)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def unchanged(before: dict[str, str], root: str) -> list[str]:
    """The files of ``before`` that are missing or differ now (empty when nothing was lost or changed)."""
    after = snapshot(root)
    return sorted(rel for rel, digest in before.items() if after.get(rel) != digest)


# Ways to damage a file. Each changes the bytes; the size stays for `garble` and `random_bytes`.
def truncate(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)


def garble(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        block = fh.read(16)
        fh.seek(size // 2)
        fh.write(bytes(b ^ 0xFF for b in block))


def random_bytes(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))


def drop_records(path: str) -> None:
    """Rewrites a shard with its first half of records: a valid TFRecord file with fewer records."""
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    with tf.io.TFRecordWriter(path) as writer:
        for record in records[: len(records) // 2]:
            writer.write(record)


def delete(path: str) -> None:
    os.remove(path)


DAMAGES = {"truncate": truncate, "garble": garble, "random_bytes": random_bytes, "drop_records": drop_records}
DAMAGES["delete"] = delete


def run_unprivileged(args: list[str], cwd: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs the ``tfsidefuse`` command in another process in which file permissions apply.

    As root, the process runs without the capabilities that bypass permission checks (``CAP_DAC_OVERRIDE``,
    ``CAP_DAC_READ_SEARCH``; util-linux' ``setpriv``), so a file of mode 000 is unreadable to it.
    """
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [*prefix, os.path.join(VENV_BIN, "tfsidefuse"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
