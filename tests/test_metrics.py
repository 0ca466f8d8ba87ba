import keras_rs
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_serialization_test

import tfsidefuse.metrics as metrics_module
from tfsidefuse.metrics import MRR, NDCG, HitRate, ranking_metrics, shared_ranks, target_ranks

# Columns 0 (padding) and 1 (OOV) score highest but are never ranked.
SCORES = np.array([100.0, 50.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype="float32")
# Targets 2, 4 and 7 rank 1, 3 and 6.
Y_TRUE = np.array([2, 4, 7])
Y_PRED = np.tile(SCORES, (3, 1))
RANKS = np.array([1.0, 3.0, 6.0])


def _result(metric, y_true, y_pred, sample_weight=None) -> float:
    metric.update_state(y_true, y_pred, sample_weight=sample_weight)
    return float(metric.result())


def test_hand_computed_values():
    assert _result(HitRate(5), Y_TRUE, Y_PRED) == pytest.approx(2 / 3)
    assert _result(HitRate(10), Y_TRUE, Y_PRED) == pytest.approx(1.0)
    assert _result(HitRate(1), Y_TRUE, Y_PRED) == pytest.approx(1 / 3)
    assert _result(NDCG(5), Y_TRUE, Y_PRED) == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert _result(NDCG(10), Y_TRUE, Y_PRED) == pytest.approx((1.0 + 0.5 + 1 / np.log2(7)) / 3)
    assert _result(MRR(), Y_TRUE, Y_PRED) == pytest.approx((1.0 + 1 / 3 + 1 / 6) / 3)


def test_excluded_ids():
    # Without exclusions the padding and OOV columns outrank every target.
    assert _result(MRR(excluded_ids=()), Y_TRUE, Y_PRED) == pytest.approx(np.mean(1 / (RANKS + 2)))
    # Excluding item 3 as well moves targets 4 and 7 up by one.
    assert _result(MRR(excluded_ids=(0, 1, 3)), Y_TRUE, Y_PRED) == pytest.approx(np.mean(1 / np.array([1, 2, 5])))
    # A target scored -1e9 (as excluded columns of NextItemModel) ranks last and counts as a miss.
    y_pred = Y_PRED.copy()
    y_pred[0, 2] = -1e9
    assert _result(HitRate(5), Y_TRUE, y_pred) == pytest.approx(1 / 3)


def test_target_ranks_skip_excluded_columns_that_beat_the_target():
    rank, targets = target_ranks(Y_TRUE, Y_PRED)
    np.testing.assert_array_equal(np.asarray(rank), RANKS)
    np.testing.assert_array_equal(np.asarray(targets), Y_TRUE)
    # Duplicated excluded ids are taken out once; an excluded column below the target changes nothing.
    rank, _ = target_ranks(Y_TRUE, Y_PRED, excluded_ids=(0, 1, 1, 7))
    np.testing.assert_array_equal(np.asarray(rank), RANKS)


def test_shared_ranks_rank_once_per_batch_with_the_same_values(monkeypatch):
    calls = []
    compute = metrics_module._target_ranks
    monkeypatch.setattr(metrics_module, "_target_ranks", lambda *a: (calls.append(a[2]), compute(*a))[1])
    y_true, y_pred = tf.constant(Y_TRUE), tf.constant(Y_PRED)
    alone = ranking_metrics()
    for metric in alone:
        metric.update_state(y_true, y_pred)
    assert len(calls) == len(alone) == 7
    calls.clear()
    shared = ranking_metrics() + [MRR(excluded_ids=(0, 1, 3), name="mrr_without_3")]
    with shared_ranks():
        for metric in shared:
            metric.update_state(y_true, y_pred)
        HitRate(5).update_state(tf.constant(Y_TRUE), y_pred)  # other label tensor: ranked again
    # One rank for the standard set, one for the other excluded ids, one for the other tensor.
    assert calls == [(0, 1), (0, 1, 3), (0, 1)]
    for a, b in zip(alone, shared):
        assert float(a.result()) == pytest.approx(float(b.result()))
    assert float(shared[-1].result()) == pytest.approx(np.mean(1 / np.array([1, 2, 5])))
    # Outside the block nothing is shared any more.
    calls.clear()
    HitRate(5).update_state(y_true, y_pred)
    HitRate(10).update_state(y_true, y_pred)
    assert len(calls) == 2


def test_sequence_form_counts_only_real_targets():
    # [batch=2, seq_len=3, V]; slots with label 0 have no target.
    y_pred = np.tile(SCORES, (2, 3, 1))
    y_true = np.array([[0, 2, 4], [0, 0, 7]])
    assert _result(HitRate(5), y_true, y_pred) == pytest.approx(2 / 3)
    assert _result(NDCG(5), y_true, y_pred) == pytest.approx(0.5)
    assert _result(MRR(), y_true, y_pred) == pytest.approx(0.5)
    # The same examples in the flat form give the same values.
    assert _result(MRR(), Y_TRUE, Y_PRED) == pytest.approx(_result(MRR(), y_true, y_pred))


def test_labels_with_a_trailing_axis_and_sample_weight():
    assert _result(MRR(), Y_TRUE[:, None], Y_PRED) == pytest.approx(0.5)
    weights = np.array([1.0, 0.0, 3.0])
    assert _result(MRR(), Y_TRUE, Y_PRED, sample_weight=weights) == pytest.approx((1.0 + 3 / 6) / 4)


def test_states_accumulate_and_reset():
    metric = HitRate(5)
    metric.update_state(Y_TRUE[:1], Y_PRED[:1])
    metric.update_state(Y_TRUE[1:], Y_PRED[1:])
    assert float(metric.result()) == pytest.approx(2 / 3)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    metric.update_state(np.zeros(3), Y_PRED)
    assert float(metric.result()) == 0.0


@pytest.mark.parametrize("k", [1, 5, 10])
def test_matches_keras_rs_on_random_scores(k):
    rng = np.random.default_rng(k)
    y_pred = rng.normal(size=(16, 30)).astype("float32")
    y_true = rng.integers(0, 30, size=(16,))
    one_hot = np.eye(30, dtype="float32")[y_true]
    # keras-rs ranks every column; ours skips label 0, so shift ids by one behind an excluded column 0.
    ours_pred = np.concatenate([np.zeros((16, 1), dtype="float32"), y_pred], axis=1)
    ours_true = y_true + 1
    ndcg = _result(NDCG(k, excluded_ids=(0,)), ours_true, ours_pred)
    hit_rate = _result(HitRate(k, excluded_ids=(0,)), ours_true, ours_pred)
    mrr = _result(MRR(excluded_ids=(0,)), ours_true, ours_pred)
    assert ndcg == pytest.approx(float(keras_rs.metrics.NDCG(k=k)(one_hot, y_pred)), abs=1e-5)
    assert hit_rate == pytest.approx(float(keras_rs.metrics.RecallAtK(k=k)(one_hot, y_pred)), abs=1e-5)
    assert mrr == pytest.approx(float(keras_rs.metrics.MeanReciprocalRank()(one_hot, y_pred)), abs=1e-5)


def test_names_and_ranking_metrics():
    assert HitRate(10).name == "hr@10"
    assert NDCG(20).name == "ndcg@20"
    assert MRR().name == "mrr"
    assert HitRate(5, name="recall@5").name == "recall@5"
    names = [m.name for m in ranking_metrics()]
    assert names == ["hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr"]
    assert [m.name for m in ranking_metrics(ks=(1,))] == ["hr@1", "ndcg@1", "mrr"]


@pytest.mark.parametrize("metric", [HitRate(7), NDCG(3, excluded_ids=(0,)), MRR(excluded_ids=())])
def test_config_round_trip(metric):
    run_serialization_test(metric)
    assert tuple(type(metric).from_config(metric.get_config()).excluded_ids) == metric.excluded_ids


def test_update_in_a_compiled_function():
    metric = NDCG(5)

    @tf.function
    def update(y_true, y_pred):
        metric.update_state(y_true, y_pred)

    update(Y_TRUE, Y_PRED)
    assert float(metric.result()) == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs, bad", [({"k": 0}, "k=0"), ({"k": 5, "excluded_ids": (-1,)}, "-1")])
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        HitRate(**kwargs)
