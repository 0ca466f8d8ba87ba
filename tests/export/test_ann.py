"""Tests of the approximate nearest-neighbour route: a real exported model, its item index, against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
tf = pytest.importorskip("tensorflow")

from tfsidefuse.config import RunConfig  # noqa: E402
from tfsidefuse.data.prepared import ITEM_ID  # noqa: E402
from tfsidefuse.data.synthetic import write_synthetic_dataset  # noqa: E402
from tfsidefuse.export import export_model  # noqa: E402
from tfsidefuse.export.ann import AnnError, AnnRecommender, ItemIndex, build_index, index_dir  # noqa: E402
from tfsidefuse.training import trainer  # noqa: E402

pytestmark = pytest.mark.tensorflow_only

K = 10
#: Recall@10 of the calibrated index against serving_default on requests it was not calibrated on.
HELD_OUT_RECALL = 0.9


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A SASRec trained one epoch on a synthetic log of 2,000 items, exported with k=10 (history kept)."""
    tmp = tmp_path_factory.mktemp("ann")
    log = write_synthetic_dataset(
        tmp / "raw", num_users=1_500, num_items=2_000, num_categories=20, num_brands=100, exponent=0.4, seed=4
    )
    config = RunConfig.from_dict(
        {
            "dataset": {
                "source": "recbole",
                "path": str(tmp / "raw"),
                "prepared_dir": str(tmp / "data"),
                "max_len": 12,
            },
            "model": {"name": "sasrec", "hidden_dim": 16, "num_layers": 1, "num_heads": 1, "ff_dim": 32},
            "training": {"run_dir": str(tmp / "run"), "epochs": 1, "batch_size": 128, "verbose": 0},
        }
    )
    result = trainer.train(config, evaluate_test=False)
    export = export_model(config.training.run_dir, tmp / "models", k=K, warmup=24)
    return {"tmp": tmp, "log": log, "config": config, "model": result.model, "export": export}


def _requests(trained, users: range) -> dict:
    """Raw serving_default requests: the histories of some users, right-padded with ""."""
    log = trained["log"]
    starts = np.concatenate([[0], np.cumsum(log.lengths)])
    rows = [[str(i) for i in log.items[starts[u] : starts[u + 1] - 1]] for u in users]
    width = max(len(r) for r in rows)
    return {"item_ids": np.array([r + [""] * (width - len(r)) for r in rows], dtype=object)}


def _serving_default(export: str, request: dict) -> tuple[np.ndarray, np.ndarray]:
    out = tf.saved_model.load(export).signatures["serving_default"](item_ids=tf.constant(request["item_ids"]))
    ids = np.vectorize(lambda t: t.decode(), otypes=[object])(out["item_ids"].numpy())
    return ids, out["scores"].numpy()


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def test_calibrated_index_recalls_brute_force(trained) -> None:
    export = trained["export"]
    index = build_index(export, recall=0.95, k=K)
    # The index holds every real item of the export (those of the log), never padding or OOV.
    items = trainer.prepare(trained["config"]).vocabulary(ITEM_ID)
    assert len(items) - 2 == len(np.unique(trained["log"].items))
    assert sorted(index.item_ids.tolist()) == sorted(items[2:])
    assert index.num_lists == min(round(4 * np.sqrt(len(items) - 2)), (len(items) - 2) // 39)
    assert index.calibrated_recall["recall"] >= 0.95 and index.probes < index.num_lists
    saved = json.loads(open(f"{index_dir(export)}/index.json").read())
    assert saved["probes"] == index.probes and saved["num_items"] == len(items) - 2

    request = _requests(trained, range(0, 400))
    exact_ids, exact_scores = _serving_default(export, request)
    route = AnnRecommender(export)
    out = route.recommend(request)
    assert out["item_ids"].shape == (400, K) and out["scores"].dtype == np.float32
    assert _recall(out["item_ids"], exact_ids) >= HELD_OUT_RECALL
    # Every id is a real item; scores are the model's logits, best first.
    assert set(out["item_ids"].ravel()) <= set(items[2:])
    assert np.all(np.diff(out["scores"], axis=1) <= 1e-6)
    # An item found by both routes has the same score (the model's logit); none beats the exact best.
    exact = {(r, i): v for r in range(400) for i, v in zip(exact_ids[r], exact_scores[r])}
    found = [(r, i, v) for r in range(400) for i, v in zip(out["item_ids"][r], out["scores"][r])]
    shared = [(v, exact[(r, i)]) for r, i, v in found if (r, i) in exact]
    np.testing.assert_allclose(*np.array(shared).T, rtol=1e-5, atol=1e-5)
    assert np.all(out["scores"][:, 0] <= exact_scores[:, 0] + 1e-5)


def test_all_probes_give_serving_default_exactly(trained) -> None:
    export = trained["export"]
    index = ItemIndex.from_saved_model(export)
    index.probes = index.num_lists
    request = _requests(trained, range(400, 460))
    request["item_ids"][0, :] = ""  # an empty row: the most popular items, as serving_default
    exact_ids, exact_scores = _serving_default(export, request)
    out = AnnRecommender(export, index=index).recommend(request)
    np.testing.assert_array_equal(out["item_ids"], exact_ids)
    np.testing.assert_allclose(out["scores"], exact_scores, rtol=1e-5, atol=1e-5)


def test_keras_model_route_matches_top_k(trained) -> None:
    model = trained["model"]
    index = ItemIndex.from_model(model, num_lists=20, probes=20)
    assert index.item_ids.min() == 2 and index.num_items == model.backbone.num_items - 2
    inputs = {"item_ids": np.array([[0, 0, 5, 9, 14], [3, 4, 5, 6, 7]], dtype="int32")}
    _, top = model.top_k(inputs, k=K)
    hidden = model._inference_hidden(inputs)[1]
    scores, ids = index.search(np.asarray(hidden), k=K)
    np.testing.assert_array_equal(ids, np.asarray(top))


def test_history_is_excluded_when_the_export_excludes_it(trained) -> None:
    run_dir = trained["config"].training.run_dir
    export = export_model(run_dir, trained["tmp"] / "models", k=K, warmup=0, exclude_history=True)
    index = ItemIndex.from_saved_model(export)
    index.probes = index.num_lists
    request = _requests(trained, range(100, 160))
    exact_ids, _ = _serving_default(export, request)
    out = AnnRecommender(export, index=index).recommend(request)
    np.testing.assert_array_equal(out["item_ids"], exact_ids)
    # The events the model reads (the most recent max_len = 12) are never recommended.
    for row, history in zip(out["item_ids"], request["item_ids"]):
        assert not set(row) & set([t for t in history if t][-12:])


def test_save_and_load_round_trip(trained, tmp_path) -> None:
    index = ItemIndex.from_saved_model(trained["export"], num_lists=10, probes=3)
    index.save(tmp_path / "idx")
    loaded = ItemIndex.load(tmp_path / "idx")
    assert (loaded.num_lists, loaded.probes, loaded.dim) == (10, 3, index.dim)
    queries = np.random.default_rng(0).normal(size=(5, index.dim)).astype(np.float32)
    for a, b in zip(index.search(queries, 7), loaded.search(queries, 7)):
        np.testing.assert_array_equal(a, b)


def test_bad_inputs_give_clear_errors(trained, tmp_path) -> None:
    export = trained["export"]
    index = ItemIndex.from_saved_model(export, num_lists=10, probes=2)
    dim = index.dim
    with pytest.raises(AnnError, match=r"k must be an int in \[1, \d+\], got k=0"):
        index.search(np.zeros((1, dim)), k=0)
    with pytest.raises(AnnError, match=rf"vectors must have {dim} columns .*got shape \(2, 3\)"):
        index.search(np.zeros((2, 3)), k=5)
    with pytest.raises(AnnError, match=r"vectors must be a non-empty 2-D array \[n, d\], got shape \(16,\)"):
        index.search(np.zeros(16), k=5)
    with pytest.raises(AnnError, match="vectors holds NaN or infinite values"):
        index.search(np.full((1, dim), np.nan), k=5)
    with pytest.raises(AnnError, match=r"probes must be an int in \[1, 10\], got probes=11"):
        ItemIndex(index.index, index.item_ids, probes=11)
    with pytest.raises(AnnError, match=r"num_lists must be an int in \[1, 2\], got num_lists=5"):
        ItemIndex.build(np.ones((100, 4)), np.arange(100), num_lists=5)
    with pytest.raises(AnnError, match=r"item_ids must hold one id per embedding row \(100\), got shape \(99,\)"):
        ItemIndex.build(np.ones((100, 4)), np.arange(99))
    with pytest.raises(AnnError, match=r"recall must be a number in \(0, 1\], got recall=1.5"):
        index.calibrate(np.zeros((3, dim)), recall=1.5)
    with pytest.raises(FileNotFoundError, match="no saved item index"):
        ItemIndex.load(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="not a SavedModel directory"):
        build_index(tmp_path)
    route = AnnRecommender(export, index=index)
    with pytest.raises(AnnError, match=r"missing \['item_ids'\], unexpected \['items'\]"):
        route.recommend({"items": np.array([["1"]], dtype=object)})
    other = ItemIndex.build(np.ones((100, dim + 1)), np.array([str(i) for i in range(100)], dtype=object))
    with pytest.raises(AnnError, match=f"dimension {dim + 1} but .* embeds users in {dim}"):
        AnnRecommender(export, index=other)
