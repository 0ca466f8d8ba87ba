"""InputEncoder: raw histories -> model inputs and model ids -> raw item ids, on the tiny prepared dataset.

The SavedModel side of the contract (the same inputs, the same top-K as `serving_default`) is checked in
`tests/export/test_input_encoder_serving.py`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import tfsidefuse
from tfsidefuse.data import InputEncoder, RequestError
from tfsidefuse.data.ingest import encode
from tfsidefuse.data.prepared import PreparedDataset, write_prepared
from tfsidefuse.models.registry import build_model

ROOT = Path(__file__).resolve().parents[2]
NAN = float("nan")

#: Rows of three kinds: longer than max_len (3), padding on both sides with an unknown id and an unknown rating,
#: a "[PAD]" token; bucket edges hit exactly (0.5 and 1.5 are the boundaries of `gap`).
REQUEST = {
    "item_ids": [["y", "z", "x", "x"], ["", "w", "nope", ""], ["[PAD]", "y"]],
    "rating": [["4", "3", "5", "2"], ["", "1", "9", ""], ["1", "2"]],
    "gap": [[NAN, 1.0, 1.0, 0.5], [0.0, 100.0, 0.49, 1.5], [3.0, 1.5]],
}


@pytest.fixture
def prepared(tiny_raw, tmp_path) -> PreparedDataset:
    return PreparedDataset.open(write_prepared(encode(tiny_raw, max_len=3), tmp_path / "tiny", num_shards=1))


@pytest.fixture
def encoder(prepared) -> InputEncoder:
    return InputEncoder.from_prepared(prepared)


def test_the_tiny_vocabularies_the_hand_checks_rely_on(prepared, encoder):
    # Items in order of first appearance (a: y z x x, b: y z w); ratings by frequency, ties by token.
    assert prepared.vocabulary("item_id") == ["[PAD]", "[OOV]", "y", "z", "x", "w"]
    assert prepared.vocabulary("rating") == ["[PAD]", "[OOV]", "1", "2", "3", "4", "5"]
    assert prepared.schema.feature("gap").boundaries == [0.5, 1.5]
    assert encoder.input_names == ["item_ids", "rating", "gap"] and encoder.max_len == 3
    assert repr(encoder) == "InputEncoder(4 items, features: rating (categorical), gap (bucketized), max_len=3)"


def test_encode_hand_checked(encoder):
    out = encoder.encode(REQUEST)
    assert sorted(out) == ["gap", "item_ids", "rating"] and all(v.dtype == np.int32 for v in out.values())
    # Row 0: the most recent 3 of 4 events (z x x). Row 1: padding dropped, "nope" and rating "9" unknown (1).
    # Row 2: "[PAD]" is padding, so one event, left-padded.
    np.testing.assert_array_equal(out["item_ids"], [[3, 4, 4], [0, 5, 1], [0, 0, 2]])
    np.testing.assert_array_equal(out["rating"], [[4, 6, 3], [0, 2, 1], [0, 0, 3]])
    # gap: 2 + #{b in [0.5, 1.5]: b <= v}; NaN -> 1. Kept values: (1, 1, 0.5), (100, 0.49), (1.5).
    np.testing.assert_array_equal(out["gap"], [[3, 3, 3], [0, 4, 2], [0, 0, 4]])


def test_width_is_the_longest_kept_row(encoder):
    out = encoder.encode(
        {"item_ids": [["y", ""], ["", "z"]], "rating": [["1", ""], ["", "2"]], "gap": [[1, 2], [3, 4]]}
    )
    np.testing.assert_array_equal(out["item_ids"], [[2], [3]])
    np.testing.assert_array_equal(out["gap"], [[3], [4]])


def test_numpy_rows_bytes_and_numbers_encode_as_lists_do(encoder):
    width = 4
    as_arrays = {
        "item_ids": np.array([row + [""] * (width - len(row)) for row in REQUEST["item_ids"]]),
        "rating": np.array([[v.encode() for v in row] + [b""] * (width - len(row)) for row in REQUEST["rating"]]),
        "gap": np.array([row + [NAN] * (width - len(row)) for row in REQUEST["gap"]], dtype=np.float32),
    }
    got, want = encoder.encode(as_arrays), encoder.encode(REQUEST)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    ints = encoder.encode({"item_ids": [["y", "z"]], "rating": [["1", "2"]], "gap": [[np.int64(0), 2]]})
    np.testing.assert_array_equal(ints["gap"], [[2, 4]])


def test_directory_model_and_selected_features(prepared, tiny_raw):
    by_path = InputEncoder.from_prepared(prepared.directory)
    for name, value in by_path.encode(REQUEST).items():
        np.testing.assert_array_equal(value, InputEncoder.from_prepared(prepared).encode(REQUEST)[name])
    only_gap = InputEncoder.from_prepared(prepared, features=["gap"], max_len=2)
    out = only_gap.encode({"item_ids": REQUEST["item_ids"], "gap": REQUEST["gap"]})
    np.testing.assert_array_equal(out["item_ids"], [[4, 4], [5, 1], [0, 2]])
    model = build_model("sasrec_f", {"features": ["cat", "gap"], "hidden_dim": 8, "num_heads": 1}, prepared=prepared)
    for_model = InputEncoder.from_prepared(prepared, model=model)
    assert for_model.input_names == ["item_ids", "gap"] and for_model.max_len == model.backbone.max_len
    with pytest.raises(ValueError, match="either a model or features/max_len"):
        InputEncoder.from_prepared(prepared, model=model, max_len=2)
    with pytest.raises(tfsidefuse.data.SchemaError, match="unknown feature 'time'"):
        InputEncoder.from_prepared(prepared, features=["time"])
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        InputEncoder.from_prepared(os.path.dirname(prepared.directory))


def test_a_damaged_prepared_directory_is_refused(prepared):
    with open(os.path.join(prepared.directory, "vocab", "item_id.txt"), "a") as fh:
        fh.write("extra\n")
    with pytest.raises(tfsidefuse.PreparedDataError, match="vocab/item_id.txt"):
        InputEncoder.from_prepared(prepared.directory)


def test_decode_inverts_encode(encoder):
    rows = [["x"], ["y", "w", "z"], ["w", "w"]]
    request = {"item_ids": rows, "rating": [["1"] * len(r) for r in rows], "gap": [[NAN] * len(r) for r in rows]}
    decoded = encoder.decode(encoder.encode(request)["item_ids"])
    assert decoded.dtype == object and decoded.shape == (3, 3)
    assert [[t for t in row if t != "[PAD]"] for row in decoded.tolist()] == rows
    # Longer rows come back as their most recent max_len events; unknown ids as the OOV token.
    long = {"item_ids": [["w", "nope", "y", "z"]], "rating": [["1"] * 4], "gap": [[NAN] * 4]}
    assert encoder.decode(encoder.encode(long)["item_ids"]).tolist() == [["[OOV]", "y", "z"]]
    # Ids outside the vocabulary decode to "[OOV]", as the SavedModel's reverse lookup; any integer shape.
    assert encoder.decode(np.array([0, 1, 5, 6, -1], dtype=np.int64)).tolist() == [
        "[PAD]",
        "[OOV]",
        "w",
        "[OOV]",
        "[OOV]",
    ]
    assert encoder.decode(np.int32(2)).tolist() == "y"


def test_empty_rows_raise_unless_allowed(encoder):
    request = {"item_ids": [["y"], ["", "[PAD]"]], "rating": [["1"], ["1", "1"]], "gap": [[1.0], [1.0, 1.0]]}
    with pytest.raises(RequestError, match=r"`item_ids`\[1\] has no event \(only padding: \['', '\[PAD\]'\]\)"):
        encoder.encode(request)
    out = encoder.encode(request, allow_empty=True)
    np.testing.assert_array_equal(out["item_ids"], [[2], [0]])
    np.testing.assert_array_equal(out["rating"], [[2], [0]])


def _with(**changes) -> dict:
    request = {name: [list(row) for row in rows] for name, rows in REQUEST.items()}
    request.update(changes)
    return request


@pytest.mark.parametrize(
    "request_, message",
    [
        ([["y"]], r"a request must be a dict with the inputs \['item_ids', 'rating', 'gap'\], got list"),
        ({"item_ids": [["y"]], "rating": [["1"]]}, r"missing input\(s\) \['gap'\]"),
        (_with(ratings=[["1"]]), r"unknown input\(s\) \['ratings'\]"),
        (_with(item_ids=[]), "`item_ids` holds no row"),
        (
            _with(item_ids="y z"),
            r"`item_ids` must be a batch of rows \[batch, events\] \(a list of lists\), got str 'y z'",
        ),
        (_with(item_ids=["y", "z", "x"]), r"`item_ids`\[0\] must be a list of values, one per event, got str 'y'; "),
        (
            _with(item_ids=np.array(["y", "z"])),
            r"`item_ids` must be a batch of rows \[batch, events\], got an array of shape \[2\]",
        ),
        (
            _with(item_ids=[["y", 5, "x", "x"], ["w"], ["y"]]),
            r"`item_ids`\[0\]\[1\] must be a raw item id \(a string\), got int 5",
        ),
        (
            _with(rating=[[4, "3", "5", "2"], ["", "1", "9", ""], ["1", "2"]]),
            r"`rating`\[0\]\[0\] must be a raw `rating` value \(a string\), got int 4",
        ),
        (
            _with(gap=[[NAN, 1.0, 1.0, 0.5], [0.0, "100", 0.49, 1.5], [3.0, 1.5]]),
            r"`gap`\[1\]\[1\] must be a number \(NaN: unknown\), got str '100'",
        ),
        (
            _with(gap=[[NAN, 1.0, 1.0, 0.5], [0.0, 100.0, 0.49, 1.5], [True, 1.5]]),
            r"`gap`\[2\]\[0\] must be a number \(NaN: unknown\), got bool True",
        ),
        (
            _with(rating=[["4", "3", "5", "2"], ["", "1", "9", ""]]),
            r"`rating` has 2 row\(s\) but `item_ids` has 3: one row per history",
        ),
        (
            _with(gap=[[NAN, 1.0, 1.0, 0.5], [0.0, 100.0, 0.49], [3.0, 1.5]]),
            r"`gap`\[1\] has 3 value\(s\) but `item_ids`\[1\] has 4 event\(s\): one value per event",
        ),
        (_with(item_ids=[["y", b"\xff", "x", "x"], ["w"], ["y"]]), r"`item_ids`\[0\]\[1\] is not UTF-8 text: b'\\xff'"),
    ],
)
def test_bad_requests_name_the_input_and_the_value(encoder, request_, message):
    with pytest.raises(RequestError, match=message):
        encoder.encode(request_)


def test_request_errors_are_user_errors(encoder):
    with pytest.raises(tfsidefuse.UserError):
        encoder.encode({"item_ids": [[1]], "rating": [["1"]], "gap": [[1.0]]})
    with pytest.raises(ValueError, match=r"decode takes integer item ids, got dtype float64 \[2.0\]"):
        encoder.decode(np.array([2.0]))


def test_recommend_is_top_k_on_the_encoded_request_decoded(prepared):
    keras.utils.set_random_seed(1)
    model = build_model("sasrec_f", {"features": ["cat", "gap"], "hidden_dim": 8, "num_heads": 1}, prepared=prepared)
    encoder = InputEncoder.from_prepared(prepared, model=model)
    request = {"item_ids": REQUEST["item_ids"], "gap": REQUEST["gap"]}
    ids, scores = encoder.recommend(model, request, k=3)
    want_scores, want_ids = model.top_k(encoder.encode(request), k=3)
    assert ids.tolist() == encoder.decode(np.asarray(want_ids)).tolist()
    np.testing.assert_allclose(scores, np.asarray(want_scores), rtol=1e-6)
    assert scores.dtype == np.float32 and not {"[PAD]", "[OOV]"} & set(ids.ravel())
    # Rows without events: an error, or the most popular items (ties in id order) with their counts.
    empty = {"item_ids": [["y"], [""]], "gap": [[1.0], [NAN]]}
    with pytest.raises(RequestError, match=r"`item_ids`\[1\] has no event"):
        encoder.recommend(model, empty, k=3)
    popularity = np.array([0, 0, 5, 1, 7, 1], dtype=np.float64)
    ids, scores = encoder.recommend(model, empty, k=3, popularity=popularity)
    assert ids[1].tolist() == ["x", "y", "z"] and scores[1].tolist() == [7.0, 5.0, 1.0]
    with pytest.raises(ValueError, match=r"popularity must hold one count per item id, shape \(6,\)"):
        encoder.recommend(model, empty, k=3, popularity=[1, 2])
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 4\]"):
        encoder.recommend(model, request, k=5)
    # An encoder without a feature the model reads, or keeping another number of events, is refused.
    with pytest.raises(ValueError, match=r"reads the interaction feature\(s\) \['gap'\]"):
        InputEncoder.from_prepared(prepared, features=[]).recommend(model, {"item_ids": [["y"]]})
    with pytest.raises(ValueError, match="reads the last 3 events but this encoder keeps 2"):
        InputEncoder.from_prepared(prepared, max_len=2).recommend(model, REQUEST)


def test_encodes_without_tensorflow_under_jax(prepared, encoder, tmp_path):
    """On a machine without TensorFlow (import blocked), under the JAX backend: the same encodings."""
    site = tmp_path / "no_tensorflow"
    site.mkdir()
    (site / "sitecustomize.py").write_text('import sys\nsys.modules["tensorflow"] = None\n')
    script = f"""
import json, sys
import tfsidefuse
from tfsidefuse import InputEncoder
assert sys.modules.get("tensorflow") is None
request = json.loads({json.dumps(json.dumps(REQUEST))})
out = InputEncoder.from_prepared({prepared.directory!r}).encode(request)
print(json.dumps({{name: value.tolist() for name, value in out.items()}}))
"""
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {name: value.tolist() for name, value in encoder.encode(REQUEST).items()}
