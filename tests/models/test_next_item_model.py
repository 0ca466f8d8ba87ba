import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_gradients_reach_every_weight, run_serialization_test

from tfsidefuse.losses import NextItemCrossEntropy
from tfsidefuse.metrics import MRR, NDCG, HitRate
from tfsidefuse.models import AuxiliaryHead, NextItemModel, SASRecBackbone

NUM_ITEMS = 20
ITEM_IDS = np.array([[0, 0, 5, 7, 9, 3], [3, 4, 5, 6, 2, 8], [0, 0, 0, 0, 0, 11]], dtype="int32")
# Next item at every slot; 0 where there is no target (padding).
LABELS = np.array([[0, 0, 7, 9, 3, 12], [4, 5, 6, 2, 8, 13], [0, 0, 0, 0, 0, 14]], dtype="int32")


def _model(dropout: float = 0.0, **kwargs) -> NextItemModel:
    keras.utils.set_random_seed(0)
    backbone = SASRecBackbone(
        num_items=NUM_ITEMS,
        max_len=kwargs.pop("max_len", 10),
        hidden_dim=8,
        num_heads=2,
        ff_dim=16,
        dropout=dropout,
        attention_dropout=dropout,
        dtype=kwargs.pop("dtype", None),
    )
    return NextItemModel(backbone, **kwargs)


def _np_logits(model: NextItemModel, item_ids: np.ndarray) -> np.ndarray:
    hidden = np.asarray(model.backbone({"item_ids": item_ids})["sequence_output"])
    return hidden @ np.asarray(model.backbone.item_table()).T


def _dataset(lengths: tuple[int, ...], batch_size: int = 4, seed: int = 0, last_position: bool = False):
    """A tf.data pipeline of (inputs, labels) whose batches have different lengths."""
    rng = np.random.default_rng(seed)
    parts = []
    for length in lengths:
        ids = rng.integers(2, NUM_ITEMS, size=(batch_size, length)).astype("int32")
        ids[:, : length // 3] = 0
        if last_position:
            labels = rng.integers(2, NUM_ITEMS, size=(batch_size,)).astype("int32")
        else:
            labels = np.concatenate([ids[:, 1:], rng.integers(2, NUM_ITEMS, size=(batch_size, 1))], axis=1)
            labels = np.where(ids == 0, 0, labels).astype("int32")
        parts.append(tf.data.Dataset.from_tensor_slices(({"item_ids": ids}, labels)).batch(batch_size))
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    return dataset


def test_all_positions_logits_and_loss():
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[])
    logits = np.asarray(model({"item_ids": ITEM_IDS}, training=True, all_positions=True))
    assert logits.shape == (3, 6, NUM_ITEMS)
    np.testing.assert_allclose(logits, _np_logits(model, ITEM_IDS), atol=1e-5)
    np.testing.assert_allclose(model({"item_ids": ITEM_IDS}, all_positions=True), logits, atol=1e-6)
    # fit's forward pass (TensorFlow, no XLA) scores the real slots only, in row-major order; JAX scores every slot.
    packed = np.asarray(model({"item_ids": ITEM_IDS}, training=True)["logits"])
    np.testing.assert_allclose(packed, logits[ITEM_IDS != 0] if model._packs_positions() else logits, atol=1e-6)

    log_softmax = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    real = LABELS != 0
    expected = -np.mean(np.take_along_axis(log_softmax, LABELS[..., None], axis=-1)[..., 0][real])
    loss = model.train_on_batch({"item_ids": ITEM_IDS}, LABELS, return_dict=True)["loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_last_position_logits_exclude_padding_and_oov():
    model = _model()
    logits = np.asarray(model({"item_ids": ITEM_IDS}))
    assert logits.shape == (3, NUM_ITEMS)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits[:, :2], -1e9)
    np.testing.assert_allclose(logits[:, 2:], _np_logits(model, ITEM_IDS)[:, -1, 2:], atol=1e-5)
    np.testing.assert_allclose(model.predict({"item_ids": ITEM_IDS}, verbose=0), logits, atol=1e-6)


def test_last_position_training_keeps_the_full_softmax():
    model = _model(objective="prefix")
    logits = np.asarray(model({"item_ids": ITEM_IDS}, training=True)["logits"])
    assert logits.shape == (3, NUM_ITEMS)
    np.testing.assert_allclose(logits, _np_logits(model, ITEM_IDS)[:, -1], atol=1e-5)


def test_exclude_history():
    model = _model(exclude_history=True)
    logits = np.asarray(model({"item_ids": ITEM_IDS}))
    reference = _np_logits(model, ITEM_IDS)[:, -1]
    for row, ids in enumerate(ITEM_IDS):
        excluded = set(ids.tolist()) | {0, 1}
        for item in range(NUM_ITEMS):
            if item in excluded:
                assert logits[row, item] == -1e9
            else:
                np.testing.assert_allclose(logits[row, item], reference[row, item], atol=1e-5)


def test_top_k():
    model = _model(exclude_history=True)
    scores, ids = model.top_k({"item_ids": ITEM_IDS}, k=5)
    logits = np.asarray(model({"item_ids": ITEM_IDS}))
    expected_ids = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(logits, expected_ids, axis=-1))
    for row, history in enumerate(ITEM_IDS):
        assert not set(np.asarray(ids[row]).tolist()) & (set(history.tolist()) | {0, 1})


def test_compile_defaults_and_overrides():
    model = _model()
    model.compile()
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 1e-3)
    assert isinstance(model.loss, NextItemCrossEntropy)
    assert model.loss.reduction == "sum_over_batch_size"
    names = [m.name for m in model._compile_config.config["metrics"]]
    assert names == ["hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr"]

    model.compile(optimizer="sgd", metrics=[HitRate(3)])
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert [m.name for m in model._compile_config.config["metrics"]] == ["hr@3"]


def test_fit_with_dynamic_sequence_lengths(tmp_path):
    model = _model(dropout=0.5, train_metrics=True)
    model.compile()
    history = model.fit(_dataset((5, 8, 3)), validation_data=_dataset((6, 4), last_position=True), epochs=2, verbose=0)
    for key in ("loss", "hr@10", "ndcg@10", "mrr", "val_loss", "val_hr@10", "val_ndcg@20", "val_mrr"):
        assert np.all(np.isfinite(history.history[key])), key
    assert history.history["loss"][1] < history.history["loss"][0]

    # Save and reload: same predictions, same compile state and optimizer step.
    inputs = {"item_ids": ITEM_IDS}
    path = str(tmp_path / "next_item.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, NextItemModel)
    assert isinstance(restored.backbone, SASRecBackbone)
    np.testing.assert_allclose(restored.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-6)
    assert restored.compiled
    assert int(restored.optimizer.iterations) == int(model.optimizer.iterations)
    assert [m.name for m in restored._compile_config.config["metrics"]][-1] == "mrr"


def test_fit_on_last_position_labels():
    model = _model(objective="prefix", train_metrics=True)
    model.compile(metrics=[NDCG(10), MRR()])
    history = model.fit(_dataset((5, 7), last_position=True), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert 0.0 < history.history["mrr"][0] <= 1.0


@pytest.mark.parametrize("objective", ["all_positions", "prefix"])
def test_training_batches_track_only_the_loss_unless_train_metrics(objective):
    last = objective == "prefix"
    train, valid = _dataset((5, 8, 3), last_position=last), _dataset((6, 4), last_position=True)
    logs = {}
    for train_metrics in (False, True):
        model = _model(dropout=0.5, objective=objective, train_metrics=train_metrics)
        model.compile()
        logs[train_metrics] = model.fit(train, validation_data=valid, epochs=2, verbose=0).history
        # Evaluation after training computes every metric again.
        assert set(model.evaluate(valid, verbose=0, return_dict=True)) >= {"loss", "hr@10", "ndcg@20", "mrr"}
    assert sorted(k for k in logs[False] if not k.startswith("val_")) == ["loss"]
    assert {"hr@10", "ndcg@20", "mrr"} <= set(logs[True])
    # The metrics only observe: same seed, same losses and validation metrics either way.
    for key in ("loss", "val_loss", "val_hr@10", "val_ndcg@20", "val_mrr"):
        np.testing.assert_allclose(logs[False][key], logs[True][key], rtol=1e-5, err_msg=key)


def test_gradients_reach_every_weight():
    model = _model()
    inputs = {"item_ids": ITEM_IDS}
    model(inputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    assert_gradients_reach_every_weight(
        model.trainable_variables, lambda: loss(LABELS, model(inputs, training=True, all_positions=True))
    )
    assert len(model.trainable_variables) == len(model.backbone.trainable_variables)


def test_auxiliary_losses_added_by_the_backbone_reach_the_training_loss():
    class PenalizedSASRec(SASRecBackbone):
        def call(self, inputs, training=None):
            self.add_loss(keras.ops.convert_to_tensor(5.0))
            return super().call(inputs, training=training)

    keras.utils.set_random_seed(0)
    kwargs = {"num_items": NUM_ITEMS, "max_len": 10, "hidden_dim": 8, "dropout": 0.0, "attention_dropout": 0.0}
    plain = NextItemModel(SASRecBackbone(**kwargs))
    penalized = NextItemModel(PenalizedSASRec(**kwargs))
    penalized({"item_ids": ITEM_IDS})
    plain({"item_ids": ITEM_IDS})
    penalized.set_weights(plain.get_weights())
    for model in (plain, penalized):
        model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[])
    losses = [m.train_on_batch({"item_ids": ITEM_IDS}, LABELS, return_dict=True)["loss"] for m in (plain, penalized)]
    np.testing.assert_allclose(losses[1], losses[0] + 5.0, rtol=1e-5)


def test_auxiliary_head_sees_labels_and_hidden_states_and_is_added_in_training_only():
    class ShareHead(AuxiliaryHead):
        def call(self, outputs, inputs, labels, backbone):
            # The share of slots with a target, and a term that depends on the hidden states.
            share = keras.ops.mean(keras.ops.cast(labels != 0, "float32"))
            return {"share": 3.0 * share, "hidden": 0.0 * keras.ops.sum(outputs["sequence_output"])}

    keras.utils.set_random_seed(0)
    kwargs = {"num_items": NUM_ITEMS, "max_len": 10, "hidden_dim": 8, "dropout": 0.0, "attention_dropout": 0.0}
    plain = NextItemModel(SASRecBackbone(**kwargs))
    auxiliary = NextItemModel(SASRecBackbone(**kwargs), heads=[ShareHead()])
    auxiliary({"item_ids": ITEM_IDS})
    plain({"item_ids": ITEM_IDS})
    auxiliary.set_weights(plain.get_weights())
    for model in (plain, auxiliary):
        model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[])
    losses = [m.train_on_batch({"item_ids": ITEM_IDS}, LABELS, return_dict=True)["loss"] for m in (plain, auxiliary)]
    share = float(np.mean(LABELS != 0))
    assert 0.0 < share < 1.0
    np.testing.assert_allclose(losses[1], losses[0] + 3.0 * share, rtol=1e-5)
    # Evaluation reports the next-item loss alone.
    last = {"item_ids": ITEM_IDS}, LABELS[:, -1]
    evaluated = [m.test_on_batch(*last, return_dict=True)["loss"] for m in (plain, auxiliary)]
    np.testing.assert_allclose(evaluated[1], evaluated[0], rtol=1e-6)


def test_mixed_precision_logits_are_float32():
    model = _model(dtype="mixed_float16")
    for kwargs in ({}, {"training": True}):
        outputs = model({"item_ids": ITEM_IDS}, **kwargs)
        logits = outputs["logits"] if kwargs else outputs
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"
        assert np.all(np.isfinite(np.asarray(logits)))


def test_config_round_trip():
    model = _model(objective="prefix", exclude_history=True, train_metrics=True)
    run_serialization_test(model)
    revived = NextItemModel.from_config(model.get_config())
    assert revived.objective == "prefix" and revived.exclude_history and revived.train_metrics
    assert revived.backbone.get_config() == model.backbone.get_config()


@pytest.mark.parametrize("objective, per_position", [("all_positions", True), ("all_targets", True), ("prefix", False)])
def test_objective_picks_the_trained_output(objective, per_position):
    model = _model(objective=objective)
    assert model.labels_per_position is per_position
    logits = model({"item_ids": ITEM_IDS}, training=True)["logits"]
    # Labels at every position: every real slot is scored; one label per example: the last slot.
    expected = (int(np.count_nonzero(ITEM_IDS)), NUM_ITEMS) if per_position else (3, NUM_ITEMS)
    assert tuple(logits.shape) == expected


@pytest.mark.parametrize("train_on, objective", [("all_positions", "all_positions"), ("last_position", "prefix")])
def test_models_saved_with_train_on_load(train_on, objective, tmp_path):
    """Version 0.2.0 saved `train_on` ("all_positions" or "last_position") in place of `objective`."""
    model = _model(objective=objective, exclude_history=True)
    config = model.get_config()
    legacy = {("train_on" if k == "objective" else k): (train_on if k == "objective" else v) for k, v in config.items()}
    revived = NextItemModel.from_config(legacy)
    assert revived.objective == objective and revived.get_config() == config
    # A whole .keras file whose config carries `train_on`.
    model.compile()
    expected = np.asarray(model({"item_ids": ITEM_IDS}))
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    saved = json.loads(entries["config.json"])
    saved["config"]["train_on"] = train_on
    del saved["config"]["objective"]
    entries["config.json"] = json.dumps(saved).encode()
    with zipfile.ZipFile(tmp_path / "legacy.keras", "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    restored = keras.models.load_model(tmp_path / "legacy.keras")
    assert isinstance(restored, NextItemModel) and restored.objective == objective
    np.testing.assert_allclose(np.asarray(restored({"item_ids": ITEM_IDS})), expected, atol=1e-6)
    with pytest.raises(ValueError, match="train_on='first_position'"):
        NextItemModel.from_config({**legacy, "train_on": "first_position"})


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"objective": "last_position"}, "objective='last_position'"),
        ({"exclude_history": "yes"}, "yes"),
        ({"train_metrics": 1}, "train_metrics=1"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        _model(**kwargs)
    with pytest.raises(ValueError, match="Backbone"):
        NextItemModel(keras.layers.Dense(4))


def test_bad_input_fallbacks_and_errors():
    model = _model()
    base = np.asarray(model({"item_ids": ITEM_IDS}))
    # Unknown ids (out of range, negative) are scored as the OOV id 1.
    unknown = ITEM_IDS.copy()
    unknown[1, 2] = NUM_ITEMS + 50
    unknown[1, 3] = -3
    as_oov = ITEM_IDS.copy()
    as_oov[1, 2] = as_oov[1, 3] = 1
    np.testing.assert_allclose(model({"item_ids": unknown}), model({"item_ids": as_oov}), atol=1e-6)
    # Too long: the most recent max_len events are used at inference.
    longer = np.concatenate([np.full((3, 4), 7, dtype="int32"), ITEM_IDS], axis=1)
    short_model = _model(max_len=ITEM_IDS.shape[1])
    np.testing.assert_allclose(short_model({"item_ids": longer}), short_model({"item_ids": ITEM_IDS}), atol=1e-6)
    with pytest.raises(ValueError, match="10 slots but the model was built for max_len=6"):
        short_model({"item_ids": longer}, training=True, all_positions=True)
    with pytest.raises(ValueError, match="must be integer ids; got dtype float32"):
        model({"item_ids": ITEM_IDS.astype("float32")})
    with pytest.raises(ValueError, match=r"shape \[batch, seq_len\]; got shape \(3,\)"):
        model({"item_ids": ITEM_IDS[:, 0]})
    with pytest.raises(ValueError, match="'item_ids' entry; got \\['items'\\]"):
        model({"items": ITEM_IDS})
    assert base.shape == (3, NUM_ITEMS)
