import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tfsidefuse.cli import main


def write_config(tmp_path, **training):
    config = {
        "dataset": {
            "source": "demo",
            "prepared_dir": str(tmp_path / "data"),
            "max_len": 15,
            "num_shards": 1,
            "demo": {"num_users": 300, "num_items": 80},
        },
        "model": {"name": "sasrec", "hidden_dim": 16, "num_layers": 1, "num_heads": 1, "ff_dim": 32},
        "training": {"run_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 64, "verbose": 0, **training},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_prepare_train_evaluate_run(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["prepare", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "prepared dataset" in out and '"users": 300' in out
    assert main(["train", "--config", config, "--set", "training.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "sasrec (test)" in out and "model saved to" in out
    assert main(["evaluate", "--config", config, "--split", "valid"]) == 0
    out = capsys.readouterr().out
    assert "sasrec (valid)" in out and "most-popular (valid)" in out
    # The run directory holds the 1-epoch run: another config (2 epochs) must not replace it silently.
    assert main(["run", "--config", config]) == 2
    assert "holds a finished run of a different config (changed: ['training.epochs'])" in capsys.readouterr().err
    assert main(["run", "--config", config, "--overwrite"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["hr@5", "hr@10"])
    assert [line.split()[0] for line in lines[header + 2 : header + 5]] == ["sasrec", "sasrec", "most-popular"]


def test_errors_exit_2_with_the_key_and_value(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["train", "--config", config, "--set", "training.monitor=auc"]) == 2
    err = capsys.readouterr().err
    assert "training.monitor must be one of" in err and "'auc'" in err
    assert main(["evaluate", "--config", config]) == 2
    assert "run `tfsidefuse prepare` first" in capsys.readouterr().err
    assert main(["prepare", "--config", config]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--config", config]) == 2
    assert "run `tfsidefuse train` first" in capsys.readouterr().err
    args = ["--set", "model.name=sasrec_f", "--set", "model.features=[category, colour]"]
    assert main(["train", "--config", config, *args]) == 2
    err = capsys.readouterr().err
    assert "unknown feature(s) ['colour']" in err and "category" in err
    assert main(["prepare", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.skipif(
    shutil.which("tfsidefuse") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "tfsidefuse")),
    reason="console script not installed",
)
def test_console_script_is_installed():
    exe = shutil.which("tfsidefuse") or os.path.join(os.path.dirname(sys.executable), "tfsidefuse")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    from tfsidefuse import __version__

    assert out.stdout.strip() == f"tfsidefuse {__version__}"
