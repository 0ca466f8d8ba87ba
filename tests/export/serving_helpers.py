"""Tiny trained runs and their exports, and the in-Python reference of the serving signatures."""

import json
import os
import subprocess
import sys

import numpy as np

from tfsidefuse.config import RunConfig
from tfsidefuse.data.prepared import ITEM_ID, PreparedDataset
from tfsidefuse.evaluation import item_popularity
from tfsidefuse.export import export_model
from tfsidefuse.training import trainer

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_LEN = 10
K = 5
#: Zoo models exported by the tests, with tiny hyper-parameters (one epoch of training).
MODEL_PARAMS = {
    "sasrec": {"hidden_dim": 16, "num_layers": 1, "num_heads": 1, "ff_dim": 32},
    "sasrec_f": {"features": ["category", "brand", "action"], "hidden_dim": 16, "num_layers": 1, "num_heads": 1},
}


#: Hyper-parameters shrunk to the tiny shapes of these tests when a model's demo config has them.
TINY = {"hidden_dim": 16, "num_layers": 1, "num_heads": 1, "ff_dim": 32}


def model_params(name: str) -> dict:
    """The test params of a model: MODEL_PARAMS, or its demo config's model section with tiny sizes."""
    if name in MODEL_PARAMS:
        return MODEL_PARAMS[name]
    import yaml

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "demo", f"{name}.yaml")
    if not os.path.exists(path):
        import pytest

        pytest.skip(f"model {name!r} has no demo config ({path}) to take its hyper-parameters from")
    with open(path) as fh:
        params = dict(yaml.safe_load(fh)["model"])
    params.pop("name")
    params.update({k: v for k, v in TINY.items() if k in params})
    return params


def run_config(tmp_dir, name: str) -> RunConfig:
    return RunConfig.from_dict(
        {
            "dataset": {
                "source": "demo",
                "prepared_dir": str(tmp_dir / "data"),
                "max_len": MAX_LEN,
                "num_shards": 1,
                "demo": {"num_users": 150, "num_items": 50, "seed": 3},
            },
            "model": {"name": name, **model_params(name)},
            "training": {"run_dir": str(tmp_dir / "runs" / name), "epochs": 1, "batch_size": 64, "verbose": 0},
        }
    )


class Zoo:
    """Trains and exports each model the first time a test asks for it."""

    def __init__(self, tmp_dir):
        self.tmp_dir = tmp_dir
        self._runs, self._exports = {}, {}

    @property
    def prepared(self) -> PreparedDataset:
        return trainer.prepare(run_config(self.tmp_dir, "sasrec"))

    def run(self, name: str):
        """(run_dir, trained model) of a model."""
        if name not in self._runs:
            config = run_config(self.tmp_dir, name)
            result = trainer.train(config, evaluate_test=False)
            self._runs[name] = (config.training.run_dir, result.model)
        return self._runs[name]

    def export(self, name: str) -> str:
        """The version-1 export (k=K, history kept) of a model."""
        if name not in self._exports:
            run_dir, _ = self.run(name)
            self._exports[name] = export_model(run_dir, self.tmp_dir / "models" / name, k=K, warmup=16)
        return self._exports[name]


# ----------------------------------------------------------------------------- in-Python reference


def encode_rows(prepared: PreparedDataset, request: dict, feature_names: list[str]) -> dict:
    """Raw request -> the model's encoded inputs, as documented: "" is padding, unknown -> OOV (1),
    padding anywhere is dropped, the most recent MAX_LEN events are kept, rows are left-padded."""
    vocab = {t: i for i, t in enumerate(prepared.vocabulary(ITEM_ID))}
    vocabs = {n: {t: i for i, t in enumerate(prepared.vocabulary(n))} for n in feature_names}
    rows = []
    for r, tokens in enumerate(request["item_ids"]):
        ids = [0 if t == "" else vocab.get(t, 1) for t in tokens]
        keep = [j for j, i in enumerate(ids) if i != 0][-MAX_LEN:]
        row = {"item_ids": [ids[j] for j in keep]}
        for n in feature_names:
            row[n] = [vocabs[n].get(request[n][r][j], 1) for j in keep]
        rows.append(row)
    return left_pad(rows, ["item_ids", *feature_names])


def left_pad(rows: list[dict], keys: list[str]) -> dict:
    width = max(1, max(len(r["item_ids"]) for r in rows))
    return {key: np.array([[0] * (width - len(r[key])) + list(r[key]) for r in rows], dtype="int32") for key in keys}


def reference_top_k(model, prepared: PreparedDataset, inputs: dict, k: int = K) -> dict:
    """`model.top_k` on encoded inputs, ids as raw tokens; empty rows get the most popular items."""
    scores, ids = model.top_k(inputs, k=k)
    scores, ids = np.array(scores, dtype=np.float32), np.array(ids)
    popularity = item_popularity(prepared)
    popularity[:2] = -1
    popular = np.argsort(-popularity, kind="stable")[:k]
    empty = ~(inputs["item_ids"] != 0).any(axis=1)
    ids[empty] = popular
    scores[empty] = popularity[popular]
    tokens = np.array(prepared.vocabulary(ITEM_ID), dtype=object)
    return {"item_ids": tokens[ids], "scores": scores}


def feature_names(model) -> list[str]:
    return [f["name"] for f in getattr(model.backbone, "interaction_features", None) or ()]


def valid_requests(prepared: PreparedDataset, names: list[str], count: int = 12, pad: int = 2) -> dict:
    """Raw requests from validation histories (longest kept whole: longer than MAX_LEN), right-padded with ""."""
    import tensorflow as tf

    from tfsidefuse.data.pipeline import parse_sequence_examples

    items = prepared.vocabulary(ITEM_ID)
    vocabs = {n: prepared.vocabulary(n) for n in names}
    rows = []
    for record in tf.data.TFRecordDataset(prepared.files("valid")).take(count):
        parsed = parse_sequence_examples(record, prepared.schema)
        n = int(parsed[ITEM_ID].shape[0]) - 1
        row = {"item_ids": [items[i] for i in parsed[ITEM_ID].numpy()[:n]]}
        row.update({f: [vocabs[f][i] for i in parsed[f].numpy()[:n]] for f in names})
        rows.append(row)
    width = max(len(r["item_ids"]) for r in rows) + pad
    return {key: [r[key] + [""] * (width - len(r[key])) for r in rows] for key in rows[0]}


def ensure_dir(path) -> str:
    os.makedirs(path, exist_ok=True)
    return str(path)


def serve_isolated(export_dir: str, requests: list[dict], tmp_path) -> dict:
    """Runs JSON requests (``{"signature", "inputs"}``) through an export in a fresh process that cannot import
    tfsidefuse (``load_export_isolated.py``: TF2 and a TF1 session); its ``out.json``."""
    with open(os.path.join(tmp_path, "requests.json"), "w") as fh:
        json.dump(requests, fh)
    proc = subprocess.run(
        [sys.executable, "-I", os.path.join(HERE, "load_export_isolated.py"), export_dir, "requests.json", "out.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(tmp_path, "out.json")) as fh:
        return json.load(fh)
