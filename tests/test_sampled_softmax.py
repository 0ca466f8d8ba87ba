"""Sampled softmax training for every model: the loss layer by hand, the models' training, the config."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_serialization_test

import tfsidefuse
from tfsidefuse.config import ConfigError, load_config
from tfsidefuse.data.demo import make_demo_dataset
from tfsidefuse.data.ingest import encode
from tfsidefuse.data.pipeline import make_dataset, reading
from tfsidefuse.data.prepared import PreparedDataset, write_prepared
from tfsidefuse.evaluation import item_popularity
from tfsidefuse.layers import AccidentalHitRemoval, SampledSoftmax
from tfsidefuse.layers.sampled_softmax import MASKED_LOGIT, sampling_probabilities
from tfsidefuse.losses import NextItemCrossEntropy
from tfsidefuse.models import NextItemModel, SASRecBackbone
from tfsidefuse.models.registry import BACKBONES, build_model
from tfsidefuse.training.trainer import create_model

NUM_ITEMS = 9


def _log_softmax_loss(logits: np.ndarray, columns=0) -> np.ndarray:
    """-log softmax(logits)[row, column] per row, in float64."""
    logits = np.asarray(logits, np.float64)
    columns = np.broadcast_to(columns, logits.shape[:1])
    top = logits.max(axis=-1, keepdims=True)
    return (np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]) - logits[np.arange(len(logits)), columns]


# --------------------------------------------------------------------------------------------------------------------
# The loss layer
# --------------------------------------------------------------------------------------------------------------------


def test_all_items_as_negatives_equals_the_full_softmax():
    rng = np.random.default_rng(0)
    full = (rng.normal(size=(4, NUM_ITEMS)) * 3).astype("float32")
    labels = np.array([2, 5, 8, 0], "int32")  # the last slot has no target
    layer = SampledSoftmax(NUM_ITEMS, num_negatives=NUM_ITEMS - 1, logq_correction=False)
    negatives = np.arange(NUM_ITEMS, dtype="int32")  # every item, the targets included: hits are removed
    per_slot = np.asarray(layer(full[np.arange(4), labels], full, labels, negatives))
    expected = np.asarray(NextItemCrossEntropy(reduction="none")(labels, full))
    np.testing.assert_allclose(per_slot, expected, atol=1e-5)
    assert per_slot[3] == 0.0
    # Without the removal the target's column counts twice: log(sum_j e^z_j + e^z_y) - z_y.
    layer = SampledSoftmax(NUM_ITEMS, num_negatives=NUM_ITEMS - 1, logq_correction=False, remove_accidental_hits=False)
    per_slot = np.asarray(layer(full[np.arange(4), labels], full, labels, negatives))
    twice = np.log(np.exp(full).sum(axis=1) + np.exp(full[np.arange(4), labels])) - full[np.arange(4), labels]
    np.testing.assert_allclose(per_slot[:3], twice[:3], atol=1e-5)


def test_uniform_correction_is_a_constant_shift_and_keeps_the_full_softmax():
    rng = np.random.default_rng(1)
    full = rng.normal(size=(3, NUM_ITEMS)).astype("float32")
    labels = np.array([2, 3, 4], "int32")
    negatives = np.arange(2, NUM_ITEMS, dtype="int32")  # every real item
    layer = SampledSoftmax(NUM_ITEMS, num_negatives=NUM_ITEMS - 2)
    per_slot = np.asarray(layer(full[np.arange(3), labels], full[:, 2:], labels, negatives))
    np.testing.assert_allclose(per_slot, _log_softmax_loss(full[:, 2:], labels - 2), atol=1e-5)


def test_logq_correction_by_hand():
    # Popularity sampler, exponent 1: counts 0, 0, 1, 3, 4, 2 -> q = (0, 0, .1, .3, .4, .2).
    counts = np.array([0, 0, 1, 3, 4, 2], "float64")
    layer = SampledSoftmax(6, num_negatives=3, sampler="popularity", item_counts=counts)
    np.testing.assert_allclose(sampling_probabilities(6, "popularity", counts), [0, 0, 0.1, 0.3, 0.4, 0.2])
    target_logits = np.array([1.0, 2.0], "float32")
    negative_logits = np.array([[0.5, -1.0, 3.0], [0.0, 1.0, 2.0]], "float32")
    labels = np.array([2, 3], "int32")
    negatives = np.array([4, 5, 3], "int32")
    logits, one_hot = layer.candidate_logits(target_logits, negative_logits, labels, negatives)
    q_rows = np.array([[0.1, 0.4, 0.2, 0.3], [0.3, 0.4, 0.2, 0.3]])
    expected = np.concatenate([target_logits[:, None], negative_logits], axis=1) - np.log(q_rows)
    # Row 1: negative 3 is its own target, masked.
    expected[1, 3] = MASKED_LOGIT
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(one_hot), [[1, 0, 0, 0], [1, 0, 0, 0]])
    loss = np.asarray(layer(target_logits, negative_logits, labels, negatives))
    np.testing.assert_allclose(loss, _log_softmax_loss(expected), rtol=1e-5)


def test_negatives_only_correction_by_hand():
    """`logq_correction="negatives"`: the target keeps its logit, each negative loses log(N q_i)."""
    counts = np.array([0, 0, 1, 3, 4, 2], "float64")  # q = (0, 0, .1, .3, .4, .2)
    layer = SampledSoftmax(6, num_negatives=3, sampler="popularity", item_counts=counts, logq_correction="negatives")
    target_logits = np.array([1.0, 2.0], "float32")
    negative_logits = np.array([[0.5, -1.0, 3.0], [0.0, 1.0, 2.0]], "float32")
    labels = np.array([2, 3], "int32")
    negatives = np.array([4, 5, 3], "int32")
    logits, _ = layer.candidate_logits(target_logits, negative_logits, labels, negatives)
    expected = np.concatenate([target_logits[:, None], negative_logits - np.log(3 * np.array([0.4, 0.2, 0.3]))], 1)
    expected[1, 3] = MASKED_LOGIT  # row 1: negative 3 is its own target
    # Up to a shift of every logit of a row by log N (the softmax is the same): the layer adds log N to the target.
    np.testing.assert_allclose(np.asarray(logits)[:, :3] - np.log(3.0), expected[:, :3], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(logits)[0, 3] - np.log(3.0), expected[0, 3], rtol=1e-6)
    assert np.asarray(logits)[1, 3] == MASKED_LOGIT
    loss = np.asarray(layer(target_logits, negative_logits, labels, negatives))
    np.testing.assert_allclose(loss, _log_softmax_loss(expected), rtol=1e-5)
    # "all" is True, "none" is False.
    for mode, flag in (("all", True), ("none", False)):
        a = SampledSoftmax(6, num_negatives=3, sampler="popularity", item_counts=counts, logq_correction=mode)
        b = SampledSoftmax(6, num_negatives=3, sampler="popularity", item_counts=counts, logq_correction=flag)
        np.testing.assert_array_equal(
            np.asarray(a.candidate_logits(target_logits, negative_logits, labels, negatives)[0]),
            np.asarray(b.candidate_logits(target_logits, negative_logits, labels, negatives)[0]),
        )


def test_negatives_only_correction_estimates_the_full_normalizer():
    """Over draws, the mean of the corrected negatives' e^logit is the sum of e^z over the non-target items."""
    rng = np.random.default_rng(4)
    counts = np.array([0, 0, 5, 1, 3, 8, 2, 4, 1], "float64")
    layer = SampledSoftmax(
        NUM_ITEMS, num_negatives=4, sampler="popularity", item_counts=counts, logq_correction="negatives", seed=2
    )
    scores = rng.normal(size=NUM_ITEMS).astype("float32")
    labels = np.array([5], "int32")
    sums = []
    for _ in range(3000):
        ids = np.asarray(layer.sample(layer.draw(), labels))
        logits, _ = layer.candidate_logits(scores[labels], scores[ids][None, :], labels, ids)
        logits = np.asarray(logits, np.float64)[0]
        # Relative to the target's logit (the layer shifts the whole row by log N).
        sums.append(np.exp(logits[1:] - logits[0] + scores[5]).sum())
    full = np.exp(scores[2:].astype(np.float64)).sum() - np.exp(scores[5])
    np.testing.assert_allclose(np.mean(sums), full, rtol=0.05)


def test_accidental_hits_are_masked_per_row():
    logits = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]], "float32")
    one_hot = np.array([[1, 0, 0, 0], [1, 0, 0, 0]], "float32")
    ids = np.array([[7, 5, 7, 8], [5, 5, 7, 8]], "int32")  # row 0: 7 again at column 2; row 1: 5 at column 1
    out = np.asarray(AccidentalHitRemoval()(logits, one_hot, ids))
    np.testing.assert_array_equal(out, [[1.0, 2.0, MASKED_LOGIT, 4.0], [1.0, MASKED_LOGIT, 3.0, 4.0]])
    probabilities = np.asarray(keras.ops.softmax(out))
    assert probabilities[0, 2] == 0.0 and probabilities[1, 1] == 0.0


def test_in_batch_sampler_draws_batch_targets_with_their_share_as_q():
    layer = SampledSoftmax(NUM_ITEMS, num_negatives=4, sampler="in_batch")
    labels = np.array([0, 3, 3, 0, 7, 5], "int32")  # labelled slots: 3, 3, 7, 5
    # Draw u picks the floor(4u)+1-th labelled slot.
    draws = np.array([0.0, 0.3, 0.6, 0.99], "float32")
    np.testing.assert_array_equal(np.asarray(layer.sample(draws, labels)), [3, 3, 7, 5])
    np.testing.assert_allclose(np.asarray(layer.probabilities(np.array([3, 7, 5, 2]), labels)), [0.5, 0.25, 0.25, 0])


def test_fixed_samplers_follow_their_distribution():
    counts = np.array([0, 0, 10, 0, 30, 60], "float64")
    for sampler, kwargs in (
        ("uniform", {}),
        ("popularity", {"item_counts": counts}),
        ("popularity", {"item_counts": counts, "sampler_exponent": 0.5}),
        ("log_uniform", {"item_counts": counts}),
    ):
        layer = SampledSoftmax(6, num_negatives=5, sampler=sampler, seed=3, **kwargs)
        draws = keras.random.uniform((200_000,), seed=4)
        ids = np.asarray(layer.sample(draws, np.zeros(1, "int32")))
        frequencies = np.bincount(ids, minlength=6) / len(ids)
        expected = np.asarray(layer.probabilities(np.arange(6), np.zeros(1, "int32")))
        np.testing.assert_allclose(frequencies, expected, atol=5e-3)
        assert frequencies[:2].sum() == 0.0  # padding and OOV are never drawn
    # Zipf over the popularity ranks: item 5 (60) first, then 4 (30), 2 (10), 3 (0).
    zipf = np.log((np.arange(4) + 2) / (np.arange(4) + 1)) / np.log(5)
    np.testing.assert_allclose(sampling_probabilities(6, "log_uniform", counts)[[5, 4, 2, 3]], zipf)


def test_hard_negatives_keep_the_k_highest_negatives():
    layer = SampledSoftmax(NUM_ITEMS, num_negatives=4, hard_negatives=2, logq_correction=False)
    target = np.array([0.0], "float32")
    negatives = np.array([[5.0, -1.0, 3.0, 1.0]], "float32")
    loss = np.asarray(layer(target, negatives, np.array([2], "int32"), np.array([3, 4, 5, 6], "int32")))
    np.testing.assert_allclose(loss, _log_softmax_loss(np.array([[0.0, 5.0, 3.0]])), rtol=1e-6)


def test_draws_differ_between_calls_and_config_round_trip():
    counts = np.arange(NUM_ITEMS, dtype="float64")
    layer = SampledSoftmax(
        NUM_ITEMS, num_negatives=5, sampler="popularity", sampler_exponent=0.75, item_counts=counts, hard_negatives=2
    )
    assert not np.array_equal(np.asarray(layer.draw()), np.asarray(layer.draw()))
    run_serialization_test(layer)
    restored = SampledSoftmax.from_config(layer.get_config())
    np.testing.assert_array_equal(restored.item_counts, counts)
    assert restored.get_config() == layer.get_config()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_negatives": NUM_ITEMS}, "num_negatives"),
        ({"sampler": "zipf"}, "sampler"),
        ({"sampler": "popularity"}, "item_counts"),
        ({"hard_negatives": 5, "num_negatives": 5}, "hard_negatives"),
        ({"item_counts": [1, 2]}, "item_counts"),
        ({"logq_correction": "target"}, "logq_correction='target'"),
        ({"remove_accidental_hits": 1}, "remove_accidental_hits=1"),
    ],
)
def test_layer_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SampledSoftmax(NUM_ITEMS, **{"num_negatives": 4, **kwargs})


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


def _sasrec(sampled_softmax=None, **kwargs):
    keras.utils.set_random_seed(0)
    backbone = SASRecBackbone(num_items=20, max_len=6, hidden_dim=8, num_heads=2, ff_dim=16, dropout=0.0)
    return NextItemModel(backbone, sampled_softmax=sampled_softmax, **kwargs)


IDS = np.array([[0, 0, 5, 7, 9, 3], [3, 4, 5, 6, 2, 8]], "int32")
LABELS = np.array([[0, 0, 7, 9, 3, 12], [4, 5, 6, 2, 8, 13]], "int32")


def test_model_loss_with_every_item_equals_the_full_softmax_loss():
    # 19 uniform negatives from the 18 real items cannot cover them; score every item through the model instead.
    model = _sasrec(SampledSoftmax(20, num_negatives=19, logq_correction=False))
    model.compile(metrics=[])
    vectors = model({"item_ids": IDS}, training=True)["vectors"]  # packed real slots: [10, d]
    assert tuple(vectors.shape) == (10, 8)
    labels = LABELS[IDS != 0]
    table = model.backbone.item_table()
    per_slot = model.sampled_softmax(
        model.score_targets(vectors, labels, table),
        model.score_item_ids(vectors, np.arange(20, dtype="int32"), table),
        labels,
        np.arange(20, dtype="int32"),
    )
    full = NextItemCrossEntropy()(labels, model.score_items(vectors))
    np.testing.assert_allclose(float(np.mean(per_slot)), float(full), atol=1e-5)


def test_gradients_reach_the_item_table_and_only_sampled_rows_and_targets():
    model = _sasrec(SampledSoftmax(20, num_negatives=3, seed=1), objective="prefix")
    model.compile(metrics=[])
    inputs = {"item_ids": IDS}
    labels = np.array([12, 13], "int32")
    with tf.GradientTape() as tape:
        outputs = model(inputs, training=True)
        draws = outputs["draws"]
        loss = model.compute_loss(inputs, labels, outputs, training=True)
    table = model.backbone.item_embedding.embeddings
    grad = tape.gradient(loss, table)
    grad = tf.convert_to_tensor(grad).numpy()
    negatives = np.asarray(model.sampled_softmax.sample(draws, labels))
    touched = set(np.nonzero(np.abs(grad).sum(axis=1))[0])
    # Output rows of the targets and negatives, input rows of the histories.
    assert {12, 13} | set(negatives.tolist()) <= touched
    assert touched <= {12, 13} | set(negatives.tolist()) | set(IDS.ravel().tolist()) - {0}
    assert float(loss) > 0


def test_sampled_training_output_and_train_metrics():
    model = _sasrec(SampledSoftmax(20, num_negatives=5, seed=0), train_metrics=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    ds = tf.data.Dataset.from_tensor_slices(({"item_ids": IDS}, LABELS)).batch(2).repeat(10)
    history = model.fit(ds, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert "hr@10" in history.history  # ranked over every item from the returned vectors
    # Inference and evaluation are unchanged: full logits with padding and OOV excluded.
    logits = np.asarray(model({"item_ids": IDS}))
    assert logits.shape == (2, 20) and np.all(logits[:, :2] == -1e9)


def test_model_config_round_trip_and_save(tmp_path):
    model = _sasrec(SampledSoftmax(20, num_negatives=5, sampler="log_uniform", hard_negatives=2, seed=7))
    model.compile()
    model({"item_ids": IDS})
    config = model.get_config()
    restored = NextItemModel.from_config(config)
    assert restored.sampled_softmax.get_config() == model.sampled_softmax.get_config()
    assert (
        keras.saving.serialize_keras_object(restored)["config"] == keras.saving.serialize_keras_object(model)["config"]
    )
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.sampled_softmax.sampler == "log_uniform"
    np.testing.assert_allclose(np.asarray(loaded({"item_ids": IDS})), np.asarray(model({"item_ids": IDS})), atol=1e-6)


def test_model_rejects_a_sampler_of_another_catalogue():
    with pytest.raises(ValueError, match="num_items=20"):
        _sasrec(SampledSoftmax(30, num_negatives=5))


# --------------------------------------------------------------------------------------------------------------------
# Every registered model on a prepared demo dataset
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_prepared(tmp_path_factory):
    raw = make_demo_dataset(num_users=40, num_items=30, num_categories=4, num_brands=5, seed=2)
    return PreparedDataset.open(write_prepared(encode(raw, max_len=8), tmp_path_factory.mktemp("demo") / "demo"))


TINY = {"hidden_dim": 8, "num_layers": 1, "num_heads": 2, "ff_dim": 16}


def _tiny_params(name):
    params = dict(TINY)
    if name == "difsr":
        params["attribute_hidden_dim"] = 8
    return params


def _fit(model, prepared, objective, steps=4):
    ds = make_dataset(prepared, "train", objective=objective, batch_size=16, seed=0, shuffle_buffer=64, repeat=True)
    with reading(prepared):
        history = model.fit(ds, epochs=2, steps_per_epoch=steps, verbose=0)
    return history.history["loss"]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_model_trains_with_sampled_softmax(name, demo_prepared):
    counts = item_popularity(demo_prepared)
    num_items = demo_prepared.schema.num_items
    sampled = SampledSoftmax(num_items, num_negatives=8, sampler="popularity", item_counts=counts, seed=0)
    keras.utils.set_random_seed(0)
    model = build_model(name, _tiny_params(name), prepared=demo_prepared, sampled_softmax=sampled)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=[])
    losses = _fit(model, demo_prepared, "all_positions")
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] + 0.5, losses  # no blow-up; sampled losses are noisy over 4 steps
    # Full-ranking evaluation is unchanged: full logits over every item.
    inputs, _ = next(iter(make_dataset(demo_prepared, "valid", objective="eval", batch_size=4)))
    assert tuple(model(inputs).shape) == (4, num_items)


@pytest.mark.parametrize("name", ["sasrec", "difsr"])
def test_prefix_objective_with_in_batch_negatives(name, demo_prepared):
    num_items = demo_prepared.schema.num_items
    sampled = SampledSoftmax(num_items, num_negatives=6, sampler="in_batch", hard_negatives=3, seed=0)
    keras.utils.set_random_seed(0)
    model = build_model(name, _tiny_params(name), prepared=demo_prepared, objective="prefix", sampled_softmax=sampled)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=[])
    losses = _fit(model, demo_prepared, "prefix")
    assert np.all(np.isfinite(losses)), losses


def test_sampled_loss_decreases_on_a_longer_run(demo_prepared):
    num_items = demo_prepared.schema.num_items
    keras.utils.set_random_seed(0)
    sampled = SampledSoftmax(num_items, num_negatives=10, sampler="uniform", seed=0)
    model = build_model("sasrec", _tiny_params("sasrec"), prepared=demo_prepared, sampled_softmax=sampled)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=[])
    ds = make_dataset(demo_prepared, "train", objective="all_positions", batch_size=40, seed=0, repeat=True)
    with reading(demo_prepared):
        losses = model.fit(ds, epochs=4, steps_per_epoch=5, verbose=0).history["loss"]
    assert losses[-1] < losses[0] - 0.1, losses


def test_auxiliary_losses_are_added_to_the_sampled_loss(demo_prepared):
    num_items = demo_prepared.schema.num_items
    keras.utils.set_random_seed(0)
    model = build_model(
        "difsr",
        _tiny_params("difsr"),
        prepared=demo_prepared,
        sampled_softmax=SampledSoftmax(num_items, num_negatives=5, seed=0),
    )
    model.compile(metrics=[])
    inputs, labels = next(iter(make_dataset(demo_prepared, "train", objective="all_positions", batch_size=8)))
    outputs = model(inputs, training=True)
    vectors, draws = outputs["vectors"], outputs["draws"]
    auxiliary = model.auxiliary_losses(outputs, labels)
    assert auxiliary  # the attribute predictors
    packed, _ = model._pack(inputs, labels, outputs)
    sampled_only = float(model.sampled_softmax_loss(vectors, packed, draws))
    total = float(model.compute_loss(inputs, labels, outputs, training=True))
    np.testing.assert_allclose(total, sampled_only + sum(float(v) for v in auxiliary.values()), rtol=1e-5)


def test_cloze_model_trains_with_sampled_softmax(demo_prepared):
    num_items = demo_prepared.schema.num_items
    keras.utils.set_random_seed(0)
    model = build_model(
        "bert4rec",
        {**TINY, "mask_prob": 0.4, "seed": 1},
        prepared=demo_prepared,
        sampled_softmax=SampledSoftmax(num_items, num_negatives=8, seed=0),
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=[])
    inputs, labels = next(iter(make_dataset(demo_prepared, "train", objective="all_positions", batch_size=8)))
    outputs = model(inputs, training=True)
    vectors = outputs["vectors"]
    # Scoring vectors at the masked slots: the BERT head's outputs.
    assert tuple(vectors.shape)[1:] == (8,)
    assert tuple(vectors.shape)[0] == int(np.sum(np.asarray(outputs["labels"]) != 0))
    losses = _fit(model, demo_prepared, "all_positions")
    assert np.all(np.isfinite(losses)), losses


# --------------------------------------------------------------------------------------------------------------------
# Config and trainer
# --------------------------------------------------------------------------------------------------------------------


def _config(tmp_path, **training):
    return load_config(
        "demo/sasrec",
        {
            "dataset.prepared_dir": str(tmp_path / "data"),
            "training.run_dir": str(tmp_path / "run"),
            **{f"training.{k}": v for k, v in training.items()},
        },
    )


@pytest.mark.parametrize(
    "training, match",
    [
        ({"loss": "sampled"}, "training.loss must be one of .* got 'sampled'"),
        ({"num_negatives": 10}, "training.num_negatives=10 needs training.loss: sampled_softmax"),
        ({"negative_sampler": "uniform"}, "training.negative_sampler='uniform' needs training.loss"),
        ({"loss": "sampled_softmax", "negative_sampler": "zipf"}, "training.negative_sampler must be one of"),
        ({"loss": "sampled_softmax", "num_negatives": 0}, "training.num_negatives must be a positive integer, got 0"),
        ({"loss": "sampled_softmax", "sampler_exponent": 0.5}, "training.sampler_exponent=0.5 needs"),
        (
            {"loss": "sampled_softmax", "negative_sampler": "popularity", "sampler_exponent": -1.0},
            "training.sampler_exponent must be a number >= 0, got -1.0",
        ),
        (
            {"loss": "sampled_softmax", "num_negatives": 10, "hard_negatives": 10},
            "training.hard_negatives must be below training.num_negatives=10, got 10",
        ),
        ({"logq_correction": "negatives"}, "training.logq_correction='negatives' needs training.loss"),
        ({"loss": "sampled_softmax", "logq_correction": True}, "training.logq_correction: expected str"),
        ({"loss": "sampled_softmax", "logq_correction": "target"}, "training.logq_correction must be one of"),
        ({"eval_item_block": 0}, "training.eval_item_block must be a positive integer, got 0"),
    ],
)
def test_config_errors(tmp_path, training, match):
    with pytest.raises(ConfigError, match=match):
        _config(tmp_path, **training)


def test_trainer_builds_the_sampled_softmax_and_refuses_too_many_negatives(tmp_path, demo_prepared):
    config = _config(
        tmp_path, loss="sampled_softmax", num_negatives=10, negative_sampler="popularity", sampler_exponent=0.75
    )
    config.model.params.update(TINY)
    model = create_model(config, demo_prepared)
    sampled = model.sampled_softmax
    assert (sampled.num_negatives, sampled.sampler, sampled.sampler_exponent) == (10, "popularity", 0.75)
    assert sampled.logq_correction == "all"
    negatives_only = _config(tmp_path, loss="sampled_softmax", num_negatives=10, logq_correction="negatives")
    negatives_only.model.params.update(TINY)
    assert create_model(negatives_only, demo_prepared).sampled_softmax.logq_correction == "negatives"
    np.testing.assert_array_equal(sampled.item_counts, item_popularity(demo_prepared))
    assert create_model(_config(tmp_path), demo_prepared).sampled_softmax is None
    num_items = demo_prepared.schema.num_items
    too_many = _config(tmp_path, loss="sampled_softmax", num_negatives=num_items)
    with pytest.raises(ConfigError, match=f"training.num_negatives must be below .*\\({num_items}\\), got {num_items}"):
        create_model(too_many, demo_prepared)


def test_public_build_model_accepts_the_sampled_softmax(demo_prepared):
    sampled = SampledSoftmax(demo_prepared.schema.num_items, num_negatives=4)
    model = tfsidefuse.build_model("sasrec", TINY, prepared=demo_prepared, sampled_softmax=sampled)
    assert model.sampled_softmax is sampled
