"""The TensorFlow Recommenders bridge: a TFRS retrieval stack on an export answers as `serving_default`.

The bridge runs in its own process under Keras 2 (`TF_USE_LEGACY_KERAS=1`); `serving_default` answers in a fresh
process that cannot import tfsidefuse. How the comparison is exact: the TFRS index holds the real items only
(`serving_default` never returns padding or OOV); the export with `exclude_history` is queried with the history as
exclusions; a row without events (zero query embedding; `serving_default` answers it with the most popular items)
is reported in `empty_rows` and left out; positions may differ only between items whose scores tie.
"""

import importlib.util

import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import MAX_LEN, K, valid_requests
from test_input_encoder_serving import serve_in_fresh_process

from tfsidefuse.data.pipeline import parse_sequence_examples
from tfsidefuse.data.prepared import ITEM_ID
from tfsidefuse.export import export_model
from tfsidefuse.export.tfrs_bridge import BridgeError, run_bridge

pytestmark = [
    pytest.mark.tensorflow_only,
    pytest.mark.skipif(
        importlib.util.find_spec("tensorflow_recommenders") is None or importlib.util.find_spec("tf_keras") is None,
        reason='needs the tfrs extra: pip install -e ".[tfrs]" (tensorflow-recommenders, tf_keras)',
    ),
]

KS = (1, 3, 5)
#: Scores closer than this are ties: their order may differ between two float32 matrix products.
TIE = 1e-5


def held_out(prepared, names: list[str]) -> dict:
    """Every user's test record as a raw history (all but the last event) and its target (the last event)."""
    items = prepared.vocabulary(ITEM_ID)
    vocabs = {n: prepared.vocabulary(n) for n in names}
    rows, targets = [], []
    for record in tf.data.TFRecordDataset(prepared.files("test")):
        parsed = parse_sequence_examples(record, prepared.schema)
        ids = parsed[ITEM_ID].numpy()
        rows.append(
            {
                "item_ids": [items[i] for i in ids[:-1]],
                **{n: [vocabs[n][i] for i in parsed[n].numpy()[:-1]] for n in names},
            }
        )
        targets.append(items[ids[-1]])
    width = max(len(r["item_ids"]) for r in rows)
    history = {key: [r[key] + [""] * (width - len(r[key])) for r in rows] for key in rows[0]}
    return {"history": history, "targets": targets}


def assert_same_top_k(got: dict, want: dict, rows: list[int]) -> None:
    """Same scores, and the same ids at every position except inside a run of tied scores."""
    for r in rows:
        got_ids, want_ids = got["item_ids"][r], list(want["item_ids"][r])
        want_scores = np.asarray(want["scores"][r])
        np.testing.assert_allclose(got["scores"][r], want_scores, rtol=0, atol=TIE, err_msg=f"row {r}")
        for j, (a, b) in enumerate(zip(got_ids, want_ids)):
            if a != b:
                neighbours = want_scores[max(j - 1, 0) : j + 2]
                assert (np.abs(neighbours - want_scores[j]) <= TIE).sum() > 1, (r, j, got_ids, want_ids)


def hit_rates(top_ids: list[list[str]], targets: list[str]) -> dict:
    """The fraction of targets among the first k ids, by hand."""
    return {f"top_{k}": float(np.mean([t in row[:k] for row, t in zip(top_ids, targets)])) for k in KS}


def test_tfrs_index_and_factorized_top_k_match_serving_default(zoo, tmp_path):
    run_dir, model = zoo.run("sasrec_f")
    export_dir, prepared = zoo.export("sasrec_f"), zoo.prepared
    excluding = export_model(run_dir, tmp_path / "excluding", k=K, exclude_history=True, warmup=0)
    requests = valid_requests(prepared, ["action"])
    requests["item_ids"][0][0] = "no-such-item"
    requests["item_ids"][1] = [""] * len(requests["item_ids"][1])
    requests["item_ids"][2] = ["", "[PAD]"] + requests["item_ids"][2][:-2]
    assert max(sum(t != "" for t in row) for row in requests["item_ids"]) > MAX_LEN
    data = held_out(prepared, ["action"])
    assert len(data["targets"]) == 150

    served = serve_in_fresh_process(export_dir, [requests, data["history"]], tmp_path)["tf2"]
    served_excluding = serve_in_fresh_process(excluding, [requests], tmp_path)["tf2"]
    bridge = run_bridge(export_dir, requests, data, ks=KS)
    bridge_excluding = run_bridge(excluding, requests, data, ks=KS)

    assert bridge["versions"]["tensorflow"] == tf.__version__ and bridge["versions"]["tf_keras"].startswith("2.")
    assert bridge["k"] == K and bridge["num_candidates"] == prepared.schema.num_items - 2
    assert bridge["empty_rows"] == bridge_excluding["empty_rows"] == [1]
    answered = [r for r in range(len(requests["item_ids"])) if r != 1]
    assert_same_top_k(bridge, served[0], answered)
    assert_same_top_k(bridge_excluding, served_excluding[0], answered)
    # With exclusions, no answer holds an item the model read (the most recent MAX_LEN events).
    for r in answered:
        seen = [t for t in requests["item_ids"][r] if t not in ("", "[PAD]")][-MAX_LEN:]
        assert not set(bridge_excluding["item_ids"][r]) & set(seen)
    assert bridge_excluding["item_ids"] != bridge["item_ids"]

    # FactorizedTopK (id-based, every item ranked) against the hit rates of serving_default's own top-K.
    expected = hit_rates(served[1]["item_ids"], data["targets"])
    assert bridge["metrics"] == pytest.approx(expected, abs=1e-6)
    assert bridge_excluding["metrics"] == pytest.approx(expected, abs=1e-6)  # the metric has no exclusions
    assert 0 < expected["top_1"] <= expected["top_3"] <= expected["top_5"] < 1


def test_bridge_errors_name_the_problem(zoo, tmp_path):
    with pytest.raises(BridgeError, match="not a tfsidefuse export"):
        run_bridge(tmp_path, {"item_ids": [["i1"]]})
    with pytest.raises(BridgeError, match=r"a request must hold exactly the inputs \['item_ids', 'action'\]"):
        run_bridge(zoo.export("sasrec_f"), {"item_ids": [["i1"]]})
