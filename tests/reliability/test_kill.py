"""SIGKILL in the middle of `prepare`, `train` and `export`: nothing half-written is ever used, nothing that
existed is lost, and the next run cleans up (and a killed training resumes, losing at most one epoch)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time

import pytest
from faults import VENV_BIN, cli, snapshot, unchanged, write_config

from tfsidefuse.data.prepared import PreparedDataset


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_NUM_INTRAOP_THREADS": "1"}
    return subprocess.Popen(
        [os.path.join(VENV_BIN, "tfsidefuse"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def kill_when(process: subprocess.Popen, ready, timeout: float = 240.0) -> None:
    """SIGKILLs the process as soon as ``ready()`` is true; fails if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the process ended (code {process.returncode}) before the kill point: {err.decode()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the kill point was not reached in time")
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_kill_during_prepare_leaves_the_old_dataset_and_is_cleaned_up(workspace, capsys):
    # A larger dataset, so that the write lasts long enough to be caught in the middle.
    write_config("big.yaml", **{"dataset.demo": {"num_users": 30000, "num_items": 500, "seed": 3}})
    before = snapshot("data")
    process = start("prepare", "--config", "big.yaml", "--overwrite")
    kill_when(process, lambda: glob.glob(f".data.tmp-{process.pid}-*/train"))
    assert glob.glob(".data.tmp-*"), "the killed writer's temporary directory is left (to be removed next time)"
    # The old dataset is intact and still opens.
    assert unchanged(before, "data") == []
    assert PreparedDataset.open("data", verify=True).split_records("test") == 300
    # The next prepare removes the leftovers of the killed one.
    assert cli(capsys, "prepare", "--config", "config.yaml", "--overwrite")[0] == 0
    assert not glob.glob(".data.tmp-*") and not glob.glob(".data.old-*")


def test_kill_between_the_renames_of_prepare_restores_the_old_dataset(workspace, capsys):
    """A writer killed after moving the old dataset aside and before moving the new one in left no dataset at
    all; the next prepare moves the old one back first, so reuse still checks it against the config."""
    before = snapshot("data")
    os.makedirs(".data.old-999999999-x")
    os.rename("data", ".data.old-999999999-x/old")
    assert cli(capsys, "prepare", "--config", "config.yaml")[0] == 0
    assert unchanged(before, "data") == []
    assert not os.path.exists(".data.old-999999999-x")


def history_epochs(path: str) -> list[int]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [int(line.split(",")[0]) for line in fh.read().splitlines()[1:] if line]


def test_kill_during_training_resumes_losing_at_most_one_epoch(workspace, capsys):
    write_config(
        "long.yaml",
        **{
            "training.run_dir": "long",
            "training.epochs": 4,
            "training.patience": 10,
            "dataset.prepared_dir": "longdata",
            "dataset.demo": {"num_users": 4000, "num_items": 300, "seed": 3},
        },
    )
    assert cli(capsys, "prepare", "--config", "long.yaml")[0] == 0
    process = start("train", "--config", "long.yaml")
    partial = os.path.join("long", "history.partial.csv")
    kill_when(process, lambda: len(history_epochs(partial)) >= 2)
    done = history_epochs(partial)
    # Killed: no model, no metrics, nothing that `evaluate` or `export` would take for a finished run.
    assert not os.path.exists("long/model.keras") and not os.path.exists("long/metrics.json")
    code, err = cli(capsys, "evaluate", "--config", "long.yaml")
    assert code == 2 and "run `tfsidefuse train` first" in err
    assert cli(capsys, "train", "--config", "long.yaml")[0] == 0
    epochs = history_epochs("long/history.csv")
    # Every epoch is logged; at most the one in progress at the kill ran twice.
    assert epochs[-1] == 3 and sorted(set(epochs)) == [0, 1, 2, 3]
    assert len(epochs) - 4 <= 1 and epochs[: len(done)] == done


def test_kill_during_export_leaves_nothing_a_server_would_load(workspace, capsys):
    process = start("export", "--run", "run", "--base", "models", "--warmup", "10")
    kill_when(process, lambda: glob.glob(f"models/.tmp-1-{process.pid}/*"))
    # TF Serving loads numbered version directories only; the killed export left none.
    assert sorted(n for n in os.listdir("models") if n.isdigit()) == []
    assert cli(capsys, "export", "--run", "run", "--base", "models", "--warmup", "10")[0] == 0
    assert sorted(os.listdir("models")) == ["1"]  # the killed export's temporary directory is gone
