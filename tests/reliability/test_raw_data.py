"""Raw files: a damaged or unreadable file is an error naming it (and the line); a file changed after
`prepare` is never reused silently."""

from __future__ import annotations

import glob
import json
import os
import random

import pytest
import yaml
from faults import cli, run_unprivileged, snapshot, truncate, unchanged


def write_s3rec(root: str, users: int = 120, items: int = 40, seed: int = 0) -> None:
    """A small dataset in the S3-Rec format (sequences.txt, item_attributes.json)."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "sequences.txt"), "w") as fh:
        for user in range(1, users + 1):
            seq = [rng.randint(1, items) for _ in range(rng.randint(4, 9))]
            fh.write(f"{user} {' '.join(map(str, seq))}\n")
    attributes = {str(item): [rng.randint(1, 6), rng.randint(7, 12)] for item in range(1, items + 1)}
    with open(os.path.join(root, "item_attributes.json"), "w") as fh:
        json.dump(attributes, fh)


@pytest.fixture
def s3rec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_s3rec("raw")
    config = {
        "dataset": {"source": "s3rec", "path": "raw", "prepared_dir": "data", "max_len": 10, "num_shards": 2},
        "model": {"name": "sasrec", "hidden_dim": 8, "num_layers": 1, "num_heads": 1, "ff_dim": 16},
        "training": {"run_dir": "run", "epochs": 1, "verbose": 0},
    }
    with open("config.yaml", "w") as fh:
        yaml.safe_dump(config, fh)
    return str(tmp_path)


def test_changed_raw_files_are_not_reused(s3rec, capsys):
    assert cli(capsys, "prepare", "--config", "config.yaml")[0] == 0
    before = snapshot("data")
    with open("raw/sequences.txt", "a") as fh:
        fh.write("999 1 2 3 4\n")
    code, err = cli(capsys, "train", "--config", "config.yaml")
    assert code == 2 and "raw files changed" in err and "['sequences.txt']" in err, err
    assert unchanged(before, "data") == [] and not os.path.exists("run")
    assert cli(capsys, "prepare", "--config", "config.yaml", "--overwrite")[0] == 0
    with open("data/stats.json") as fh:
        assert json.load(fh)["users"] == 121


def damage_line(path: str, line: int, text: str) -> None:
    with open(path) as fh:
        lines = fh.read().splitlines()
    lines[line - 1] = text
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda: damage_line("raw/sequences.txt", 5, "5 3 x 7"), "sequences.txt:5: item ids must be positive"),
        (lambda: damage_line("raw/sequences.txt", 7, "7 3 0 7"), "sequences.txt:7: item id '0'"),
        (lambda: damage_line("raw/sequences.txt", 2, "2"), "sequences.txt:2: user '2' has no items"),
        (lambda: truncate("raw/item_attributes.json"), "item_attributes.json:1: invalid JSON"),
        (lambda: open("raw/item_attributes.json", "w").write("[1, 2]"), "item_attributes.json:1: expected a JSON"),
        (lambda: os.remove("raw/sequences.txt"), "has no sequences.txt"),
        (lambda: open("raw/sequences.txt", "wb").write(b"1 2 \xff\xfe 3\n"), "sequences.txt:1: not UTF-8"),
    ],
    ids=["non-integer", "item-0", "no-items", "truncated-json", "json-shape", "deleted", "binary"],
)
def test_damaged_raw_files_are_named_and_nothing_is_written(s3rec, capsys, damage, message):
    damage()
    code, err = cli(capsys, "prepare", "--config", "config.yaml")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not os.path.exists("data") and not glob.glob(".data.*")


def test_an_unreadable_raw_file_is_named(s3rec):
    os.chmod("raw/sequences.txt", 0o000)
    result = run_unprivileged(["prepare", "--config", "config.yaml"], cwd=s3rec)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Permission denied" in result.stderr and "sequences.txt" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not os.path.exists("data")


def test_an_unwritable_run_directory_is_named(workspace):
    before = snapshot("run")
    os.chmod("run", 0o555)
    try:
        result = run_unprivileged(["train", "--config", "config.yaml"], cwd=workspace)
    finally:
        os.chmod("run", 0o755)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Permission denied" in result.stderr and "run" in result.stderr and "Traceback" not in result.stderr
    assert unchanged(before, "run") == []


def test_an_unreadable_shard_is_named(workspace):
    os.chmod("data/test/part-00001-of-00002.tfrecord", 0o000)
    result = run_unprivileged(["evaluate", "--config", "config.yaml", "--no-baseline"], cwd=workspace)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "test/part-00001-of-00002.tfrecord" in result.stderr and "Traceback" not in result.stderr
