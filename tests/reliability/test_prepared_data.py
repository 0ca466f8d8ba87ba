"""A damaged prepared dataset is an error naming the file, at open, at read time and in `tfsidefuse verify`."""

from __future__ import annotations

import os
import shutil

import pytest
from faults import DAMAGES, SHARD, cli, garble, random_bytes, snapshot, unchanged

from tfsidefuse.data.prepared import PreparedDataset
from tfsidefuse.errors import PreparedDataError
from tfsidefuse.evaluation import evaluate_model
from tfsidefuse.training.trainer import load_trained


def test_verify_prints_the_fingerprint(workspace, capsys):
    capsys.readouterr()
    from tfsidefuse.cli import main

    assert main(["verify", "data"]) == 0
    out = capsys.readouterr().out
    assert PreparedDataset.open("data").fingerprint in out and "valid 300 records in 2 shards" in out


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_damaged_shard_is_named_and_nothing_else_changes(workspace, capsys, split, damage):
    shard = f"{split}/{SHARD}"
    DAMAGES[damage](os.path.join("data", split, SHARD))
    run_before, data_before = snapshot("run"), snapshot("data")

    code, err = cli(capsys, "verify", "data")
    assert code == 2 and shard in err, err
    # The command that reads the split: training reads train (and valid), evaluation its split.
    if split == "train":
        code, err = cli(capsys, "train", "--config", "config.yaml")
    else:
        code, err = cli(capsys, "evaluate", "--config", "config.yaml", "--split", split, "--no-baseline")
    assert code == 2, err
    assert shard in err and "Traceback" not in err, err
    assert unchanged(run_before, "run") == []
    assert unchanged(data_before, "data") == []


def test_a_shard_added_after_prepare_is_named(workspace, capsys):
    shutil.copy(os.path.join("data", "test", SHARD), os.path.join("data", "test", "part-00002-of-00002.tfrecord"))
    code, err = cli(capsys, "evaluate", "--config", "config.yaml", "--no-baseline")
    assert code == 2 and "test/part-00002-of-00002.tfrecord: not in the manifest" in err, err


def swap_first_lines(path: str) -> None:
    """Same size, other content: the vocabulary maps two items to each other's ids."""
    with open(path) as fh:
        lines = fh.read().splitlines(keepends=True)
    i = next(i for i in range(2, len(lines) - 1) if len(lines[i]) == len(lines[i + 1]) and lines[i] != lines[i + 1])
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    with open(path, "w") as fh:
        fh.write("".join(lines))


METADATA_DAMAGES = [
    ("schema.yaml", garble),
    ("schema.yaml", os.remove),
    ("item_features.npz", garble),
    ("item_features.npz", random_bytes),
    ("stats.json", garble),
    ("vocab/item_id.txt", swap_first_lines),
    ("vocab/item_id.txt", os.remove),
]


@pytest.mark.parametrize(("name", "damage"), METADATA_DAMAGES, ids=[f"{n}-{d.__name__}" for n, d in METADATA_DAMAGES])
def test_damaged_metadata_is_named_on_open(workspace, capsys, name, damage):
    damage(os.path.join("data", name))
    run_before = snapshot("run")
    code, err = cli(capsys, "evaluate", "--config", "config.yaml", "--no-baseline")
    assert code == 2, err
    if name == "schema.yaml" and damage is os.remove:
        assert "not a prepared dataset" in err  # without its schema the directory is not a dataset
    else:
        assert name in err, err
    assert unchanged(run_before, "run") == []


@pytest.mark.parametrize("damage", [os.remove, garble, None], ids=["delete", "garble", "empty"])
def test_a_missing_or_damaged_manifest_is_an_error(workspace, capsys, damage):
    path = os.path.join("data", "manifest.json")
    if damage is None:
        open(path, "w").close()
    else:
        damage(path)
    code, err = cli(capsys, "evaluate", "--config", "config.yaml", "--no-baseline")
    assert code == 2 and "manifest" in err and "prepare" in err, err


@pytest.mark.parametrize("damage", [random_bytes, garble, DAMAGES["drop_records"]], ids=lambda d: d.__name__)
def test_damage_after_open_fails_the_read_and_names_the_shard(workspace, damage):
    """Open checks sizes; a shard changed afterwards (or in place, same size) is caught when it is read."""
    prepared = PreparedDataset.open("data")
    model = load_trained("run", prepared)
    clean = evaluate_model(model, prepared, "valid")
    damage(os.path.join("data", "valid", SHARD))
    with pytest.raises(PreparedDataError, match=f"valid/{SHARD}"):
        evaluate_model(model, prepared, "valid")
    assert clean["ndcg@20"] > 0
