"""Configs, `--set` values and run directories: a user's mistake is one message and exit code 2, and a run
directory is never half-written or silently replaced by another config's run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from faults import SHARD, cli, random_bytes, snapshot, unchanged, write_config

from tfsidefuse.data.prepared import PreparedDataset


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("training.epochs", "--set expects section.key=value, got 'training.epochs'"),
        ("=3", "--set expects section.key=value"),
        ("model.dropout=[0.5", "the value '[0.5' is not valid YAML"),
        ("model.dropout=1.5", "dropout"),
        ("training.batch_size=-4", "training.batch_size"),
        ("training.monitor=auc", "training.monitor must be one of"),
        ("model.colour=3", "colour"),
        ("model.name=nope", "model.name must be one of"),
        ("training.nope=1", "nope"),
    ],
)
def test_bad_settings_exit_2_and_write_nothing(workspace, capsys, setting, message):
    before = snapshot(".")
    code, err = cli(capsys, "train", "--config", "config.yaml", "--set", setting, "--set", "training.run_dir=fresh")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not os.path.exists("fresh")  # no stray run directory
    assert unchanged(before, ".") == []


def test_an_unknown_feature_fails_before_the_run_directory_is_made(workspace, capsys):
    args = ["--set", "model.name=sasrec_f", "--set", "model.features=[colour]", "--set", "training.run_dir=fresh"]
    code, err = cli(capsys, "train", "--config", "config.yaml", *args)
    assert code == 2 and "unknown feature(s) ['colour']" in err, err
    assert not os.path.exists("fresh")


@pytest.mark.parametrize(
    ("content", "message"),
    [("dataset: [1, 2", "config.yaml"), ("- a list", "config.yaml"), ("", "config.yaml")],
    ids=["not-yaml", "not-a-mapping", "empty"],
)
def test_a_malformed_config_file_is_named(workspace, capsys, content, message):
    with open("bad.yaml", "w") as fh:
        fh.write(content)
    code, err = cli(capsys, "train", "--config", "bad.yaml")
    assert code == 2 and "bad.yaml" in err and "Traceback" not in err, err


def test_a_missing_config_file_is_named(workspace, capsys):
    code, err = cli(capsys, "evaluate", "--config", "nowhere.yaml")
    assert code == 2 and "nowhere.yaml" in err, err


def test_a_finished_run_of_another_config_is_kept_unless_overwrite(workspace, capsys):
    before = snapshot("run")
    code, err = cli(capsys, "train", "--config", "config.yaml", "--set", "model.hidden_dim=8")
    assert code == 2 and "holds a finished run of a different config (changed: ['model.hidden_dim'])" in err, err
    assert unchanged(before, "run") == []
    # The same config may train again in its own directory.
    assert cli(capsys, "train", "--config", "config.yaml")[0] == 0
    # --overwrite replaces the run, and the run directory then describes the new model only.
    assert cli(capsys, "train", "--config", "config.yaml", "--set", "model.hidden_dim=8", "--overwrite")[0] == 0
    with open("run/config.yaml") as fh:
        assert yaml.safe_load(fh)["model"]["hidden_dim"] == 8
    with open("run/metrics.json") as fh:
        assert json.load(fh)["config_sha256"]
    write_config("config8.yaml", **{"model.hidden_dim": 8})
    assert cli(capsys, "evaluate", "--config", "config8.yaml", "--no-baseline")[0] == 0


def test_evaluate_refuses_a_run_of_another_model(workspace, capsys):
    write_config("other.yaml", **{"model.name": "nova", "model.features": ["category"]})
    code, err = cli(capsys, "evaluate", "--config", "other.yaml")
    assert code == 2 and "holds a run of another model config" in err and "model.name" in err, err


def test_a_config_edited_after_training_is_refused_by_evaluate_and_export(workspace, capsys):
    with open("run/config.yaml") as fh:
        saved = yaml.safe_load(fh)
    saved["model"]["dropout"] = 0.3
    with open("run/config.yaml", "w") as fh:
        yaml.safe_dump(saved, fh)
    code, err = cli(capsys, "export", "--run", "run", "--base", "models")
    assert code == 2 and "is not the config" in err and "run/model.keras" in err, err
    assert not os.path.exists("models/1")
    code, err = cli(capsys, "evaluate", "--config", "config.yaml")
    assert code == 2, err


def test_a_model_file_of_another_run_is_refused(workspace, capsys):
    write_config("fused.yaml", **{"model.name": "sasrec_f", "training.run_dir": "fused"})
    assert cli(capsys, "train", "--config", "fused.yaml")[0] == 0
    shutil.copy("fused/model.keras", "run/model.keras")
    code, err = cli(capsys, "export", "--run", "run", "--base", "models")
    assert code == 2 and "holds a SASRecFBackbone model" in err and "'sasrec'" in err, err


def test_a_run_of_a_dataset_prepared_again_is_refused(workspace, capsys):
    # Another demo seed: other data in the same prepared directory.
    write_config("reseeded.yaml", **{"dataset.demo": {"num_users": 300, "num_items": 80, "seed": 4}})
    code, err = cli(capsys, "prepare", "--config", "reseeded.yaml")
    assert code == 2 and "different dataset config (changed: ['dataset.demo'])" in err, err
    assert cli(capsys, "prepare", "--config", "reseeded.yaml", "--overwrite")[0] == 0
    code, err = cli(capsys, "evaluate", "--config", "reseeded.yaml")
    assert code == 2 and "trained on another version of the prepared dataset" in err, err


def test_run_dir_that_is_a_file_or_holds_foreign_files(workspace, capsys):
    open("afile", "w").close()
    code, err = cli(capsys, "train", "--config", "config.yaml", "--set", "training.run_dir=afile")
    assert code == 2 and "is a file" in err, err
    os.makedirs("mine")
    with open("mine/notes.txt", "w") as fh:
        fh.write("keep me")
    code, err = cli(capsys, "train", "--config", "config.yaml", "--set", "training.run_dir=mine")
    assert code == 2 and "holds no run" in err and "notes.txt" in err, err
    with open("mine/notes.txt") as fh:
        assert fh.read() == "keep me"


def test_export_to_a_base_that_is_a_file_or_of_a_run_without_model(workspace, capsys):
    open("models", "w").close()
    code, err = cli(capsys, "export", "--run", "run", "--base", "models")
    assert code == 2 and "models" in err and "Traceback" not in err, err
    os.makedirs("empty-run")
    code, err = cli(capsys, "export", "--run", "empty-run", "--base", "out")
    assert code == 2 and "empty-run" in err, err


@pytest.mark.parametrize("split", ["train", "valid"])
def test_export_from_a_damaged_dataset_is_refused_and_writes_no_version(workspace, capsys, split):
    """Export reads the training split (popularity) and the validation split (warm-up requests)."""
    random_bytes(os.path.join("data", split, SHARD))
    code, err = cli(capsys, "export", "--run", "run", "--base", "models")
    assert code == 2 and f"{split}/{SHARD}" in err and "Traceback" not in err, err
    assert not os.path.isdir("models") or [n for n in os.listdir("models") if not n.startswith(".")] == []


def test_load_model_after_one_import_in_a_fresh_process(workspace):
    code = "import keras, tfsidefuse; m = keras.models.load_model('run/model.keras'); print(type(m).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("NextItemModel")


def test_build_model_names_unknown_models_and_missing_schema():
    import tfsidefuse

    with pytest.raises(tfsidefuse.ConfigError, match="unknown model 'nope'; available: .*sasrec"):
        tfsidefuse.build_model("nope", {})
    with pytest.raises(tfsidefuse.ConfigError, match="needs the prepared dataset \\(prepared=...\\) or its schema"):
        tfsidefuse.build_model("sasrec", {})


def test_train_metrics_count_what_was_read(workspace, capsys):
    """metrics.json reports the sequences the pipeline read, and the manifest's count is what was written."""
    with open("run/metrics.json") as fh:
        metrics = json.load(fh)
    prepared = PreparedDataset.open("data")
    assert metrics["train_sequences"] == prepared.split_records("train") == prepared.stats["train_sequences"]
    assert metrics["dataset_fingerprint"] == prepared.fingerprint


def test_temporary_files_of_a_killed_save_are_removed_by_the_next_run(workspace, capsys):
    leftovers = ["run/.model.keras.tmp-999999999.keras", "run/.metrics.json.tmp-999999999-x1"]
    for path in leftovers:
        with open(path, "w") as fh:
            fh.write("partial")
    mine = f"run/.config.yaml.tmp-{os.getpid()}-x2"  # a live writer's file stays
    open(mine, "w").close()
    assert cli(capsys, "train", "--config", "config.yaml")[0] == 0
    assert not any(os.path.exists(p) for p in leftovers) and os.path.exists(mine)
