"""Fault injection: a small prepared dataset and a finished run, copied into a fresh workspace per test.

Every test damages one input the way files get damaged (truncated, garbled in place, replaced by random bytes,
rewritten with fewer records, deleted, unreadable, killed mid-write) and asserts the documented outcome: a clear
error naming the file or key (exit code 2 from the command line) or a documented, tested fallback, and that
nothing that existed before was lost or changed.
"""

from __future__ import annotations

import os
import shutil

import pytest
from faults import write_config

from tfsidefuse.cli import main


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """A workspace with a prepared demo dataset and a finished one-epoch SASRec run (made once)."""
    root = str(tmp_path_factory.mktemp("reliability-base"))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        write_config("config.yaml")
        assert main(["train", "--config", "config.yaml"]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def workspace(base, tmp_path, monkeypatch):
    """A fresh copy of the base workspace, as the current directory."""
    root = str(tmp_path / "ws")
    shutil.copytree(base, root, symlinks=True)
    monkeypatch.chdir(root)
    return root
