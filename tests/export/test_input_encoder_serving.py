"""InputEncoder against the exported SavedModel: the same raw requests give the same top-K.

The SavedModel answers in a fresh process that cannot import tfsidefuse (`load_export_isolated.py`, TF2 and a TF1
session); the encoder feeds the trained Keras model in this one. Two exports: SASRec_F on the demo data (a
categorical interaction feature) and SASRec_F on the demo log read as a CSV file, with `action` and the bucketized
`time_gap` (seconds since the previous event).
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from serving_helpers import MAX_LEN, K, encode_rows, serve_isolated, valid_requests

from tfsidefuse import InputEncoder
from tfsidefuse.config import RunConfig
from tfsidefuse.data.demo import make_demo_dataset
from tfsidefuse.evaluation import item_popularity
from tfsidefuse.export import export_model
from tfsidefuse.training import trainer

pytestmark = pytest.mark.tensorflow_only

HERE = Path(__file__).resolve().parent
NAN = float("nan")


@pytest.fixture(scope="module")
def time_gap_run(tmp_path_factory):
    """(export_dir, model, prepared, log): SASRec_F with `action` and `time_gap`, one epoch, exported with k=K."""
    tmp = tmp_path_factory.mktemp("time_gap")
    log = make_demo_dataset(num_users=150, num_items=50, seed=3).interactions
    log.to_csv(tmp / "log.csv", index=False)
    config = RunConfig.from_dict(
        {
            "dataset": {
                "source": "csv",
                "path": str(tmp / "log.csv"),
                "prepared_dir": str(tmp / "data"),
                "max_len": MAX_LEN,
                "num_shards": 1,
            },
            "model": {"name": "sasrec_f", "features": ["action", "time_gap"], "hidden_dim": 16, "num_layers": 1},
            "training": {"run_dir": str(tmp / "run"), "epochs": 1, "batch_size": 64, "verbose": 0},
        }
    )
    result = trainer.train(config, evaluate_test=False)
    export_dir = export_model(config.training.run_dir, tmp / "models", k=K, warmup=0)
    return export_dir, result.model, trainer.prepare(config), log


def _log_requests(log: pd.DataFrame, boundaries: list[float], users: int = 12) -> dict:
    """Raw histories of the first users of the log (whole: longer than MAX_LEN), with the seconds since the
    previous event (NaN for the first), right-padded with "" / NaN; values on and around the bucket edges."""
    rows = []
    for _, events in list(log.groupby("user", sort=False))[:users]:
        events = events.sort_values("time", kind="stable")
        gaps = np.diff(events["time"].to_numpy(dtype=np.float64), prepend=NAN)
        rows.append({"item_ids": list(events["item"]), "action": list(events["action"]), "time_gap": list(gaps)})
    rows[3]["time_gap"][-4:] = [boundaries[0], boundaries[1], -1.0, 1e12]
    rows[4]["time_gap"][-2:] = [math.nextafter(boundaries[2], -math.inf), boundaries[2]]
    width = max(len(r["item_ids"]) for r in rows) + 1
    fill = {"item_ids": "", "action": "", "time_gap": NAN}
    return {name: [r[name] + [fill[name]] * (width - len(r[name])) for r in rows] for name in fill}


def _with_edge_cases(request: dict) -> dict:
    """An unknown item id and action, a row without events, left padding and a "[PAD]" token."""
    request = {name: [list(row) for row in rows] for name, rows in request.items()}
    request["item_ids"][0][0] = "no-such-item"
    request["action"][0][1] = "no-such-action"
    request["item_ids"][1] = [""] * len(request["item_ids"][1])
    request["item_ids"][2] = [""] + request["item_ids"][2][:-1]
    request["item_ids"][5][0] = "[PAD]"
    return request


def serve_in_fresh_process(export_dir: str, requests: list[dict], tmp_path: Path) -> dict:
    """`serving_default` outputs (TF2 and TF1 session) of raw requests, in a process without tfsidefuse."""

    def typed(rows):
        numeric = any(isinstance(v, float) for row in rows for v in row)
        return {"dtype": "float64" if numeric else "string", "value": rows}

    payload = [{"signature": "serving_default", "inputs": {k: typed(v) for k, v in r.items()}} for r in requests]
    out = serve_isolated(export_dir, payload, tmp_path)
    assert out["leaked"] == []
    return out


@pytest.mark.parametrize("case", ["demo_action", "csv_action_time_gap"])
def test_encoder_and_keras_model_give_the_savedmodel_top_k(zoo, time_gap_run, case, tmp_path):
    if case == "demo_action":
        run_dir, model = zoo.run("sasrec_f")
        export_dir, prepared = zoo.export("sasrec_f"), zoo.prepared
        request = _with_edge_cases(valid_requests(prepared, ["action"]))
    else:
        export_dir, model, prepared, log = time_gap_run
        request = _with_edge_cases(_log_requests(log, prepared.schema.feature("time_gap").boundaries))
    assert max(sum(t != "" for t in row) for row in request["item_ids"]) > MAX_LEN
    served = serve_in_fresh_process(export_dir, [request], tmp_path)

    encoder = InputEncoder.from_prepared(prepared, model=model)
    from_export = InputEncoder.from_saved_model(export_dir)
    assert encoder.input_names == from_export.input_names == list(request)
    inputs = encoder.encode(request, allow_empty=True)
    for name, value in from_export.encode(request, allow_empty=True).items():
        np.testing.assert_array_equal(value, inputs[name], err_msg=name)
    if case == "demo_action":  # the export tests' own reference encoding agrees
        for name, value in encode_rows(prepared, request, ["action"]).items():
            np.testing.assert_array_equal(value, inputs[name], err_msg=name)
    else:  # unknown (first events), below the first edge, on the first three edges, past the last one
        assert set(np.unique(inputs["time_gap"])) >= {1, 2, 3, 4, 5, 8}

    ids, scores = encoder.recommend(model, request, k=K, popularity=item_popularity(prepared))
    assert ids.shape == scores.shape == (len(request["item_ids"]), K)
    for results in (served["tf2"], served["tf1"]):
        np.testing.assert_array_equal(np.array(results[0]["item_ids"], dtype=object), ids)
        np.testing.assert_allclose(results[0]["scores"], scores, rtol=1e-5, atol=1e-5)


def test_from_saved_model_reads_bucket_edges_from_the_export_or_its_dataset(time_gap_run, tmp_path):
    export_dir, model, prepared, _ = time_gap_run
    copy = tmp_path / "1"
    shutil.copytree(export_dir, copy)
    info_path = copy / "assets.extra" / "export_info.json"
    info = json.loads(info_path.read_text())
    assert [f["name"] for f in info["interaction_features"]] == ["action", "time_gap"]
    # The export carries the edges itself: no prepared dataset is needed.
    assert info["interaction_features"][1]["boundaries"] == list(prepared.schema.feature("time_gap").boundaries)
    info["prepared_dir"] = str(tmp_path / "moved-away")
    info_path.write_text(json.dumps(info))
    edges = prepared.schema.feature("time_gap").boundaries
    alone = InputEncoder.from_saved_model(copy).encode(
        {"item_ids": [["i1", "i2"]], "action": [["view"] * 2], "time_gap": [[NAN, edges[0]]]}
    )
    np.testing.assert_array_equal(alone["time_gap"], [[1, 3]])  # NaN: unknown; the first edge: bucket 2 + 1
    # An export without them (an older one) reads them from the prepared dataset it names, or says it cannot.
    del info["interaction_features"][1]["boundaries"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(FileNotFoundError, match="bucketized feature 'time_gap'.*moved-away/schema.yaml"):
        InputEncoder.from_saved_model(copy)
    info["interaction_features"][1]["boundaries"] = [10.0]
    info_path.write_text(json.dumps(info))
    encoder = InputEncoder.from_saved_model(copy)
    assert encoder.max_len == MAX_LEN and encoder.item_vocabulary == prepared.vocabulary("item_id")
    out = encoder.encode({"item_ids": [["i1", "i2", "i3"]], "action": [["view"] * 3], "time_gap": [[NAN, 9.0, 10.0]]})
    np.testing.assert_array_equal(out["time_gap"], [[1, 2, 3]])
    with pytest.raises(FileNotFoundError, match="not a tfsidefuse export"):
        InputEncoder.from_saved_model(tmp_path)
