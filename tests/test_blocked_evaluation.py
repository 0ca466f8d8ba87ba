"""Full-ranking evaluation a block of items at a time: the same ranks, metrics and top-k as scoring every item."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import shared_data

from tfsidefuse.data.demo import make_demo_dataset
from tfsidefuse.data.ingest import encode
from tfsidefuse.data.pipeline import make_dataset, reading
from tfsidefuse.data.prepared import PreparedDataset, write_prepared
from tfsidefuse.evaluation import evaluate_in_blocks, evaluate_model
from tfsidefuse.metrics import HitRate, ranking_metrics, target_ranks
from tfsidefuse.models import NextItemModel, SASRecBackbone
from tfsidefuse.models.registry import build_model

NUM_ITEMS = 23


def _integer_model(exclude_history=False, seed=0):
    """SASRec whose scored vectors and item table hold small integers: every logit is exact, ties are real.

    Items come in groups of equal embeddings (duplicates), so that many items tie with each target.
    """
    keras.utils.set_random_seed(seed)
    backbone = SASRecBackbone(num_items=NUM_ITEMS, max_len=6, hidden_dim=4, num_heads=1, ff_dim=8, dropout=0.0)
    model = NextItemModel(backbone, exclude_history=exclude_history)
    model({"item_ids": np.full((1, 6), 2, "int32")})
    rng = np.random.default_rng(seed)
    groups = rng.integers(-2, 3, size=(5, 4)).astype("float32")
    table = groups[rng.integers(0, 5, size=NUM_ITEMS)]
    backbone.item_embedding.embeddings.assign(table)
    return model


class _RoundedVectors(NextItemModel):
    """Scores rounded hidden states, so that `H E^T` of an integer table is exact."""

    def scoring_vectors(self, hidden):
        return keras.ops.round(hidden * 2.0)


def _integer_task(exclude_history=False, seed=0):
    model = _integer_model(exclude_history, seed)
    return _RoundedVectors(model.backbone, exclude_history=exclude_history, name="rounded_vectors")


def _batch(seed=0, batch_size=9):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, NUM_ITEMS, size=(batch_size, 6)).astype("int32")
    ids[:3, :2] = 0
    labels = rng.integers(2, NUM_ITEMS, size=(batch_size,)).astype("int32")
    labels[0] = ids[0, -1]  # a target in its history
    labels[1] = 1  # the OOV id
    return {"item_ids": ids}, labels


@pytest.mark.parametrize("exclude_history", [False, True])
@pytest.mark.parametrize("block", [1, 4, 5, 7, 22, 23, 64])
def test_blocked_ranks_equal_the_full_ranks_with_ties(exclude_history, block):
    model = _integer_task(exclude_history)
    for seed in range(3):
        inputs, labels = _batch(seed)
        logits = np.asarray(model(inputs))
        # The case has ties: some other item scores exactly as the target.
        ties = (logits == logits[np.arange(len(labels)), labels][:, None]).sum(axis=1) - 1
        assert ties.max() > 0
        expected, _ = target_ranks(labels, logits)
        ranked = model.rank_in_blocks(inputs, labels, item_block=block, k=7)
        np.testing.assert_array_equal(np.asarray(ranked["rank"]), np.asarray(expected))
        np.testing.assert_array_equal(np.asarray(ranked["target_logit"]), logits[np.arange(len(labels)), labels])
        lse = np.log(np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        np.testing.assert_allclose(np.asarray(ranked["log_normalizer"]), lse, rtol=1e-6)
        top_scores, top_ids = keras.ops.top_k(logits, k=7)
        np.testing.assert_array_equal(np.asarray(ranked["top_ids"]), np.asarray(top_ids))
        np.testing.assert_array_equal(np.asarray(ranked["top_scores"]), np.asarray(top_scores))


def test_blocked_ranks_count_ties_for_the_target_by_hand():
    model = _integer_task()
    inputs, labels = _batch(1)
    logits = np.asarray(model(inputs))
    ranked = np.asarray(model.rank_in_blocks(inputs, labels, item_block=5)["rank"])
    for row, target in enumerate(labels):
        others = [i for i in range(2, NUM_ITEMS) if i != target]
        z = logits[row]
        assert ranked[row] == 1 + sum(z[i] > z[target] for i in others)


def test_top_k_with_item_block_equals_top_k():
    model = _integer_task(exclude_history=True)
    inputs, _ = _batch(2)
    for block in (3, 10, 100):
        scores, ids = model.top_k(inputs, k=5, item_block=block)
        full_scores, full_ids = model.top_k(inputs, k=5)
        np.testing.assert_array_equal(np.asarray(ids), np.asarray(full_ids))
        np.testing.assert_array_equal(np.asarray(scores), np.asarray(full_scores))


def test_random_float_model_gives_the_same_ranks():
    keras.utils.set_random_seed(3)
    model = NextItemModel(
        SASRecBackbone(num_items=NUM_ITEMS, max_len=6, hidden_dim=8, num_heads=2, ff_dim=16, dropout=0.0)
    )
    inputs, labels = _batch(4, batch_size=16)
    expected, _ = target_ranks(labels, model(inputs))
    for block in (6, 11):
        np.testing.assert_array_equal(
            np.asarray(model.rank_in_blocks(inputs, labels, item_block=block)["rank"]), np.asarray(expected)
        )


def test_argument_errors():
    model = _integer_task()
    inputs, labels = _batch()
    with pytest.raises(ValueError, match="item_block"):
        model.rank_in_blocks(inputs, labels, item_block=0)
    with pytest.raises(ValueError, match="`k`"):
        model.rank_in_blocks(inputs, labels, item_block=4, k=NUM_ITEMS + 1)


def test_evaluate_in_blocks_equals_evaluate_on_random_batches():
    model = _integer_task(exclude_history=True)
    model.compile(metrics=[HitRate(1), HitRate(3)] + ranking_metrics())
    batches = [_batch(seed, batch_size=5 + seed) for seed in range(4)]
    dataset = tf.data.Dataset.from_tensors(batches[0])
    for batch in batches[1:]:
        dataset = dataset.concatenate(tf.data.Dataset.from_tensors(batch))
    expected = model.evaluate(dataset, verbose=0, return_dict=True)
    blocked = evaluate_in_blocks(model, dataset, item_block=4)
    assert set(blocked) == set(expected) and "hr@1" in blocked
    for name, value in expected.items():
        tolerance = 1e-5 * abs(value) if name == "loss" else 0
        assert blocked[name] == pytest.approx(value, abs=tolerance), name


@pytest.fixture(scope="module")
def demo_prepared(tmp_path_factory):
    raw = make_demo_dataset(num_users=60, num_items=40, num_categories=4, num_brands=5, seed=5)
    return PreparedDataset.open(write_prepared(encode(raw, max_len=8), tmp_path_factory.mktemp("demo") / "demo"))


@pytest.mark.parametrize("name", ["sasrec", "comif", "bert4rec"])
def test_evaluate_model_with_item_block_equals_evaluate_model(name, demo_prepared):
    keras.utils.set_random_seed(0)
    params = {"hidden_dim": 8, "num_layers": 1, "num_heads": 2, "ff_dim": 16}
    model = build_model(name, params, prepared=demo_prepared)
    model.compile()
    num_items = demo_prepared.schema.num_items
    expected = evaluate_model(model, demo_prepared, "test", batch_size=32)
    for block in (7, 10 * num_items):  # a last block of another size; one block larger than the catalogue
        blocked = evaluate_model(model, demo_prepared, "test", batch_size=32, item_block=block)
        assert set(blocked) == set(expected)
        for key, value in expected.items():
            tolerance = 1e-5 * abs(value) if key == "loss" else 0
            assert blocked[key] == pytest.approx(value, abs=tolerance), (key, block)


@pytest.mark.slow
def test_amazon_beauty_blocked_evaluation_equals_full_evaluation(tmp_path):
    from tfsidefuse.data import readers

    path = shared_data("amazon-beauty")
    raw = readers.read_s3rec(str(path))
    prepared = PreparedDataset.open(write_prepared(encode(raw, max_len=50), tmp_path / "beauty"))
    keras.utils.set_random_seed(0)
    model = build_model("sasrec", {"hidden_dim": 32, "num_layers": 1}, prepared=prepared)
    model.compile()
    with reading(prepared):
        model.fit(make_dataset(prepared, "train", batch_size=256, seed=0), epochs=1, steps_per_epoch=20, verbose=0)
    expected = evaluate_model(model, prepared, "test", batch_size=512)
    blocked = evaluate_model(model, prepared, "test", batch_size=512, item_block=1000)
    for key, value in expected.items():
        tolerance = 1e-5 * abs(value) if key == "loss" else 0
        assert blocked[key] == pytest.approx(value, abs=tolerance), key
