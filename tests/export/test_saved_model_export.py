"""SavedModel export for TensorFlow Serving: signatures, loaders, graph ops, versions, bad requests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import (
    MAX_LEN,
    MODEL_PARAMS,
    K,
    encode_rows,
    feature_names,
    left_pad,
    reference_top_k,
    serve_isolated,
    valid_requests,
)

from tfsidefuse.cli import main
from tfsidefuse.data.prepared import ITEM_ID
from tfsidefuse.export import SIGNATURES, ExportError, export_model, read_warmup_file
from tfsidefuse.export import exporter as exporter_module
from tfsidefuse.export.inspect_graph import non_stock_ops

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELS = sorted(MODEL_PARAMS)


def _request_json(signature: str, inputs: dict) -> dict:
    def typed(v):
        arr = np.asarray(v, dtype=object)
        is_str = arr.size == 0 or isinstance(arr.flat[0], str)
        return {"dtype": "string" if is_str else str(np.asarray(v).dtype), "value": np.asarray(v).tolist()}

    return {"signature": signature, "inputs": {k: typed(v) for k, v in inputs.items()}}


def _strings(a) -> np.ndarray:
    return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(np.asarray(a))


@pytest.mark.parametrize("name", MODELS)
def test_every_signature_in_a_fresh_process_and_tf1_session_matches_the_model(zoo, name, tmp_path):
    run_dir, model = zoo.run(name)
    export_dir = zoo.export(name)
    prepared = zoo.prepared
    names = feature_names(model)
    raw = valid_requests(prepared, names)
    # Unknown ids, an empty row, padding on both sides, a row longer than max_len (kept: the most recent).
    raw["item_ids"][0][0] = "no-such-item"
    raw["item_ids"][1] = [""] * len(raw["item_ids"][1])
    raw["item_ids"][2] = [""] + raw["item_ids"][2][:-1]
    assert max(sum(t != "" for t in row) for row in raw["item_ids"]) > MAX_LEN
    encoded = encode_rows(prepared, raw, names)
    examples = [r.numpy() for r in tf.data.TFRecordDataset(prepared.files("valid")).take(5)]
    parsed = [tf.io.parse_single_sequence_example(e, sequence_features=_example_spec(names))[1] for e in examples]
    example_inputs = left_pad(
        [{k if k != ITEM_ID else "item_ids": v.numpy()[-MAX_LEN:] for k, v in p.items()} for p in parsed],
        ["item_ids", *names],
    )
    item_query = ["i3", "unknown-item", prepared.vocabulary(ITEM_ID)[5]]
    requests = [
        _request_json("serving_default", raw),
        _request_json("predict_examples", {"examples": [e.decode("latin-1") for e in examples]}),
        _request_json("user_embedding", raw),
        _request_json("item_embeddings", {"item_ids": item_query}),
    ]
    # Serialized records are not valid UTF-8 in general: they travel as latin-1 text.
    requests[1]["inputs"]["examples"]["dtype"] = "bytes"
    out = serve_isolated(export_dir, requests, tmp_path)
    assert out["leaked"] == [] and sorted(SIGNATURES) == out["signatures"]

    expected = [
        reference_top_k(model, prepared, encoded),
        reference_top_k(model, prepared, example_inputs),
    ]
    hidden = np.array(model.backbone(encoded, training=False)["sequence_output"])[:, -1, :]
    hidden[~(encoded["item_ids"] != 0).any(axis=1)] = 0.0
    table = np.asarray(model.backbone.item_table())
    vocab = {t: i for i, t in enumerate(prepared.vocabulary(ITEM_ID))}
    rows = [vocab.get(t, 1) for t in item_query]
    for results in (out["tf2"], out["tf1"]):
        for got, want in zip(results[:2], expected):
            np.testing.assert_array_equal(np.array(got["item_ids"], dtype=object), want["item_ids"])
            np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(results[2]["embedding"], hidden, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(results[3]["embeddings"], table[rows], rtol=1e-6, atol=1e-6)
        assert results[3]["known"] == [r >= 2 for r in rows]
    # The user embedding scores items as the model does: embedding @ table.T are its logits.
    logits = np.asarray(model(encoded, training=False))
    real = np.arange(table.shape[0]) >= 2
    nonempty = (encoded["item_ids"] != 0).any(axis=1)
    np.testing.assert_allclose((hidden @ table.T)[nonempty][:, real], logits[nonempty][:, real], rtol=1e-4, atol=1e-4)


def _example_spec(names):
    spec = {ITEM_ID: tf.io.FixedLenSequenceFeature([], tf.int64)}
    spec.update({n: tf.io.FixedLenSequenceFeature([], tf.int64) for n in names})
    return spec


@pytest.mark.parametrize("name", MODELS)
def test_graph_has_only_stock_registered_ops(zoo, name):
    found = non_stock_ops(zoo.export(name))
    assert found == {}, found


def test_saved_model_cli_show_and_run(zoo, tmp_path):
    export_dir = zoo.export("sasrec_f")
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        pytest.skip("saved_model_cli is not installed beside the interpreter")
    show = subprocess.run([cli, "show", "--dir", export_dir, "--all"], capture_output=True, text=True, timeout=120)
    assert show.returncode == 0, show.stderr[-2000:]
    for signature in SIGNATURES:
        assert f"signature_def['{signature}']" in show.stdout
    for token in ("inputs['item_ids']", "inputs['action']", "inputs['examples']", "outputs['scores']"):
        assert token in show.stdout
    assert "PyFunc" not in show.stdout
    run = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            export_dir,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            "item_ids=[['i3', 'i5', 'i7']];action=[['view', 'cart', 'buy']]",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Result for output key item_ids" in run.stdout and "Result for output key scores" in run.stdout
    _, model = zoo.run("sasrec_f")
    raw = {"item_ids": [["i3", "i5", "i7"]], "action": [["view", "cart", "buy"]]}
    want = reference_top_k(model, zoo.prepared, encode_rows(zoo.prepared, raw, ["action"]))
    for token in want["item_ids"][0]:
        assert f"b'{token}'" in run.stdout


def test_warmup_file_holds_real_validation_requests(zoo):
    export_dir = zoo.export("sasrec_f")
    path = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    requests = read_warmup_file(path)
    assert 0 < len(requests) <= 1000 and len(requests) == 16
    items = set(zoo.prepared.vocabulary(ITEM_ID))
    signatures = {s for _, s, _ in requests}
    assert signatures == {"serving_default", "predict_examples"}
    loaded = tf.saved_model.load(export_dir)
    for model_name, signature, inputs in requests:
        assert model_name == "sasrec_f"
        if signature == "serving_default":
            tokens = {t.decode() for t in inputs["item_ids"].ravel()} - {""}
            assert tokens and tokens <= items
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        assert out["item_ids"].shape == (len(next(iter(inputs.values()))), K)
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:
        return
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        assert log.predict_log.request.model_spec.signature_name in signatures


def test_bad_requests_get_the_documented_answer(zoo):
    export_dir = zoo.export("sasrec_f")
    _, model = zoo.run("sasrec_f")
    prepared = zoo.prepared
    fn = tf.saved_model.load(export_dir).signatures["serving_default"]
    # Wrong dtype: rejected before the graph runs; wrong rank: by the graph's first check, naming the input.
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        fn(item_ids=tf.constant([[3, 5]]), action=tf.constant([["view", "buy"]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"input `item_ids` must be a 2-D string tensor"):
        fn(item_ids=tf.constant(["i3", "i5"]), action=tf.constant([["view", "buy"]]))
    # An interaction feature of another shape than the items: InvalidArgument naming it.
    with pytest.raises(tf.errors.InvalidArgumentError, match="input `action` must have the same shape as `item_ids`"):
        fn(item_ids=tf.constant([["i3", "i5"]]), action=tf.constant([["view"]]))
    # Unknown ids are OOV; "[PAD]" and "" are padding; too long keeps the most recent max_len events.
    long_row = [f"i{i}" for i in range(3 * MAX_LEN)]
    raw = {
        "item_ids": [["zz-unknown", "i3", "[PAD]", ""] + [""] * (3 * MAX_LEN - 4), long_row],
        "action": [["view", "nonsense", "", ""] + [""] * (3 * MAX_LEN - 4), ["view"] * (3 * MAX_LEN)],
    }
    got = fn(**{k: tf.constant(v) for k, v in raw.items()})
    encoded = encode_rows(prepared, raw, ["action"])
    assert encoded["item_ids"][0].tolist()[-2:] == [1, prepared.vocabulary(ITEM_ID).index("i3")]
    want = reference_top_k(model, prepared, encoded)
    np.testing.assert_array_equal(_strings(got["item_ids"]), want["item_ids"])
    np.testing.assert_allclose(got["scores"].numpy(), want["scores"], rtol=1e-5, atol=1e-5)
    truncated = {k: [row[-MAX_LEN:] for row in v] for k, v in raw.items()}
    again = fn(**{k: tf.constant(v) for k, v in truncated.items()})
    np.testing.assert_array_equal(again["item_ids"].numpy()[1], got["item_ids"].numpy()[1])
    # Empty sequences (a zero-width batch too) get the most popular training items.
    for width in (0, 3):
        empty = fn(item_ids=tf.fill([2, width], ""), action=tf.fill([2, width], ""))
        want = reference_top_k(
            model, prepared, {"item_ids": np.zeros((2, 1), "int32"), "action": np.zeros((2, 1), "int32")}
        )
        np.testing.assert_array_equal(_strings(empty["item_ids"]), want["item_ids"])
        np.testing.assert_allclose(empty["scores"].numpy(), want["scores"])


def test_rest_payloads_of_the_readme_match_the_signature(zoo):
    """The README's JSON requests, converted as TF Serving converts them, run through the signature."""
    export_dir = zoo.export("sasrec_f")
    fn = tf.saved_model.load(export_dir).signatures["serving_default"]
    inputs = {k: v for k, v in fn.structured_input_signature[1].items()}
    examples = ROOT / "export" / "examples"
    rows = json.loads((examples / "predict_rows.json").read_text())
    columns = json.loads((examples / "predict_columns.json").read_text())
    readme = (ROOT / "export" / "README.md").read_text()
    for name in ("predict_rows.json", "predict_columns.json", "response_rows.json", "response_columns.json"):
        assert name in readme
    assert rows["signature_name"] == columns["signature_name"] == "serving_default"
    # Row format: a list of instances, each a dict of all inputs; TF Serving stacks them (same lengths).
    assert all(set(instance) == set(inputs) for instance in rows["instances"])
    stacked = {k: tf.constant([instance[k] for instance in rows["instances"]]) for k in inputs}
    # Columnar format: one batched value per input.
    assert set(columns["inputs"]) == set(inputs)
    batched = {k: tf.constant(v) for k, v in columns["inputs"].items()}
    for feed in (stacked, batched):
        for k, spec in inputs.items():
            assert feed[k].dtype == spec.dtype and feed[k].shape.rank == spec.shape.rank
    out_rows, out_columns = fn(**stacked), fn(**batched)
    documented_rows = json.loads((examples / "response_rows.json").read_text())
    documented_columns = json.loads((examples / "response_columns.json").read_text())
    # Row responses: {"predictions": [{output: value per instance}]}; columnar: {"outputs": {output: batch}}.
    assert len(documented_rows["predictions"]) == len(rows["instances"]) == out_rows["item_ids"].shape[0]
    # The documented responses come from an export with the default k=10; this one has k=K.
    assert out_rows["item_ids"].shape[1] == out_columns["scores"].shape[1] == K
    for prediction in documented_rows["predictions"]:
        assert set(prediction) == set(out_rows)
        assert len(prediction["item_ids"]) == len(prediction["scores"]) == 10
    assert set(documented_columns["outputs"]) == set(out_columns)
    assert np.shape(documented_columns["outputs"]["item_ids"]) == (out_columns["item_ids"].shape[0], 10)
    assert np.shape(documented_columns["outputs"]["scores"]) == (out_columns["scores"].shape[0], 10)


def test_versions_cli_exclude_history_and_killed_exports(zoo, tmp_path, monkeypatch, capsys):
    run_dir, model = zoo.run("sasrec")
    base = tmp_path / "models"
    # A killed export (SIGKILL) leaves only its temporary directory, which servers ignore.
    stale = base / ".tmp-7-999999999"
    stale.mkdir(parents=True)
    (stale / "saved_model.pb").write_bytes(b"partial")
    assert (
        main(["export", "--run", run_dir, "--base", str(base), "--k", "3", "--exclude-history", "--warmup", "4"]) == 0
    )
    assert "exported" in capsys.readouterr().out
    assert sorted(os.listdir(base)) == ["1"]  # version 1; the dead export's directory was removed
    info = json.loads((base / "1" / "assets.extra" / "export_info.json").read_text())
    assert info["k"] == 3 and info["exclude_history"] is True and info["version"] == 1
    # Never overwritten: the CLI exits 2 with a clear message, the API raises.
    assert main(["export", "--run", run_dir, "--base", str(base), "--version", "1"]) == 2
    assert "version 1 already exists" in capsys.readouterr().err
    with pytest.raises(ExportError, match="already exists"):
        export_model(run_dir, base, version=1)
    assert (
        main(["export", "--run", str(tmp_path / "nothing"), "--base", str(base), "--prepared", zoo.prepared.directory])
        == 2
    )
    assert "run `tfsidefuse train` first" in capsys.readouterr().err
    assert main(["export", "--run", run_dir, "--base", str(base), "--k", "0"]) == 2
    assert "k must be an int in [1," in capsys.readouterr().err

    # History items are never recommended with --exclude-history, and the output is model.top_k's.
    fn = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    raw = valid_requests(zoo.prepared, [], count=6)
    got = _strings(fn(item_ids=tf.constant(raw["item_ids"]))["item_ids"])
    for row, history in zip(got, raw["item_ids"]):
        assert not set(row) & set(history[-MAX_LEN:])
    model.exclude_history = True
    try:
        want = reference_top_k(model, zoo.prepared, encode_rows(zoo.prepared, raw, []), k=3)
    finally:
        model.exclude_history = False
    np.testing.assert_array_equal(got, want["item_ids"])

    # An export interrupted before the rename leaves nothing behind; the next version number is unchanged.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter_module, "write_warmup_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(run_dir, base, warmup=2)
    assert sorted(os.listdir(base)) == ["1"]
