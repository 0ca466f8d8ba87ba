import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import ITEM_IDS, np_dense, np_gelu, np_layer_norm, randomize_weights, run_model_saving_test

from tfsidefuse.data.schema import DatasetSchema, FeatureSpec
from tfsidefuse.models import BERT4RecBackbone, MaskedItemModel, NextItemModel, NOVABERTBackbone, SASRecBackbone
from tfsidefuse.models.next_item_model import EXCLUDED_LOGIT
from tfsidefuse.models.registry import build_model

NUM_ITEMS = 20
MASK = NUM_ITEMS
MAX_LEN = 6
BACKBONE_KWARGS = {"num_items": NUM_ITEMS, "max_len": MAX_LEN, "hidden_dim": 8, "num_heads": 2, "ff_dim": 16}


def _model(dropout: float = 0.0, **kwargs) -> MaskedItemModel:
    keras.utils.set_random_seed(0)
    backbone = BERT4RecBackbone(**BACKBONE_KWARGS, dropout=dropout, attention_dropout=dropout)
    model = MaskedItemModel(backbone, **{"seed": 3, **kwargs})
    model({"item_ids": ITEM_IDS})
    return model


def _np_logits(model: MaskedItemModel, hidden: np.ndarray) -> np.ndarray:
    """The output head and tied scoring of `model`, in numpy."""
    head = np_layer_norm(model.head_layer_norm, np_gelu(np_dense(model.head_dense, hidden)))
    return head @ np.asarray(model.backbone.item_table()).T + np.asarray(model.output_bias)


def _np_log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _random_windows(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    ids = rng.integers(2, NUM_ITEMS, size=(batch, length)).astype("int32")
    lengths = rng.integers(1, length + 1, size=batch)
    ids[np.arange(length)[None, :] < (length - lengths)[:, None]] = 0
    return ids


def test_masking_rate_only_real_slots_and_labels_at_masked_slots():
    model = _model(mask_prob=0.3, mask_behaviour_at_masked_slots=True)
    rng = np.random.default_rng(0)
    ids = _random_windows(rng, 400, MAX_LEN)
    rating = np.where(ids != 0, rng.integers(2, 7, size=ids.shape), 0).astype("int32")
    masked, labels = model._mask({"item_ids": tf.constant(ids), "rating": tf.constant(rating)})
    masked_ids, labels = np.asarray(masked["item_ids"]), np.asarray(labels)
    selected = masked_ids == MASK
    real = ids != 0
    assert not np.any(selected & ~real), "a padding slot was masked"
    np.testing.assert_array_equal(masked_ids[~selected], ids[~selected])
    np.testing.assert_array_equal(labels, np.where(selected, ids, 0))
    np.testing.assert_array_equal(np.asarray(masked["rating"]), np.where(selected, 1, rating))
    assert np.all(selected.any(axis=1)), "every window has a masked slot"
    # Bernoulli(0.3) per real slot, plus one forced slot in windows that drew none.
    rate = selected[real].mean()
    assert 0.3 <= rate <= 0.3 + (0.7 ** real.sum(axis=1)).mean() / real.sum(axis=1).mean() + 0.03, rate
    # Behaviour features are kept by default.
    kept, _ = _model(mask_prob=0.3)._mask({"item_ids": tf.constant(ids), "rating": tf.constant(rating)})
    np.testing.assert_array_equal(np.asarray(kept["rating"]), rating)


def test_masks_differ_between_steps_and_inside_a_compiled_function():
    model = _model(mask_prob=0.5)
    ids = tf.constant(_random_windows(np.random.default_rng(1), 32, MAX_LEN))
    masks = [np.asarray(model._mask({"item_ids": ids})[1]) for _ in range(2)]
    assert not np.array_equal(masks[0], masks[1])
    compiled = tf.function(lambda x: model._mask({"item_ids": x})[1])
    graph_masks = [np.asarray(compiled(ids)) for _ in range(2)]
    assert not np.array_equal(graph_masks[0], graph_masks[1])


def test_at_least_one_masked_slot_and_last_item_only_with_ft_ratio():
    ids = tf.constant(_random_windows(np.random.default_rng(2), 200, MAX_LEN))
    _, labels = _model(mask_prob=0.01)._mask({"item_ids": ids})
    assert np.all((np.asarray(labels) != 0).sum(axis=1) >= 1)
    _, labels = _model(mask_prob=0.9, ft_ratio=1.0)._mask({"item_ids": ids})
    labels = np.asarray(labels)
    np.testing.assert_array_equal(labels[:, :-1], 0)
    np.testing.assert_array_equal(labels[:, -1], np.asarray(ids)[:, -1])


def test_training_loss_equals_numpy_cross_entropy_at_masked_slots():
    model = _model(mask_prob=1.0)
    randomize_weights(model.weights[:-1], scale=0.3)  # every weight but the seed generator state
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), metrics=[])
    inputs = np.array([[0, 0, 0, 5, 7], [0, 3, 4, 5, 6]], dtype="int32")
    next_items = np.array([[0, 0, 0, 7, 9], [0, 4, 5, 6, 11]], dtype="int32")
    loss = model.train_on_batch({"item_ids": inputs}, next_items, return_dict=True)["loss"]
    # The window is the inputs plus the last label (oldest slot dropped beyond max_len = 6), every real slot masked.
    window = np.array([[0, 0, 0, 5, 7, 9], [0, 3, 4, 5, 6, 11]], dtype="int32")
    real = window != 0
    hidden = np.asarray(model.backbone({"item_ids": np.where(real, MASK, 0)})["sequence_output"]).astype("float64")
    log_probs = _np_log_softmax(_np_logits(model, hidden))
    expected = -np.mean(np.take_along_axis(log_probs, window[..., None], axis=-1)[..., 0][real])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_partial_mask_loss_and_packed_labels():
    model = _model(mask_prob=0.5)
    model.compile(metrics=[])
    inputs = {"item_ids": tf.constant(ITEM_IDS)}
    outputs = model(inputs, training=True)
    logits = outputs["logits"]
    labels = np.asarray(outputs["labels"])
    selected = labels != 0
    assert tuple(logits.shape) == (selected.sum(), NUM_ITEMS)
    loss = model.compute_loss(inputs, tf.constant(ITEM_IDS), outputs, training=True)
    log_probs = _np_log_softmax(np.asarray(logits, dtype="float64"))
    expected = -np.mean(log_probs[np.arange(len(log_probs)), labels[selected]])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_inference_appends_the_mask_token_and_scores_it():
    model = _model()
    randomize_weights(model.weights[:-1], scale=0.3)
    short = np.array([[0, 0, 5, 7], [3, 4, 5, 6]], dtype="int32")
    full = ITEM_IDS  # max_len slots: the oldest is dropped
    for history, query in (
        (short, np.concatenate([short, np.full((2, 1), MASK)], axis=1)),
        (full, np.concatenate([full[:, 1:], np.full((2, 1), MASK)], axis=1)),
    ):
        logits = np.asarray(model({"item_ids": history}))
        hidden = np.asarray(model.backbone({"item_ids": query.astype("int32")})["sequence_output"])[:, -1].astype(
            "float64"
        )
        expected = _np_logits(model, hidden)
        expected[:, :2] = EXCLUDED_LOGIT
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    scores, top = model.top_k({"item_ids": short}, k=3)
    np.testing.assert_array_equal(np.asarray(top), np.argsort(-logits_of(model, short), axis=1)[:, :3])
    assert np.all(np.asarray(top) >= 2)


def logits_of(model: MaskedItemModel, history: np.ndarray) -> np.ndarray:
    return np.asarray(model({"item_ids": history}))


def test_inference_gives_interaction_features_the_oov_id_at_the_mask():
    keras.utils.set_random_seed(0)
    backbone = NOVABERTBackbone(
        **BACKBONE_KWARGS,
        interaction_features=[{"name": "rating", "vocab_size": 7}],
        dropout=0.0,
        attention_dropout=0.0,
    )
    model = MaskedItemModel(backbone, seed=1)
    ids = np.array([[0, 0, 5, 7], [3, 4, 5, 6]], dtype="int32")
    rating = np.array([[0, 0, 3, 4], [2, 5, 6, 3]], dtype="int32")
    logits = np.asarray(model({"item_ids": ids, "rating": rating}))
    query = {
        "item_ids": np.concatenate([ids, np.full((2, 1), MASK, "int32")], axis=1),
        "rating": np.concatenate([rating, np.ones((2, 1), "int32")], axis=1),
    }
    hidden = np.asarray(backbone(query)["sequence_output"])[:, -1].astype("float64")
    expected = _np_logits(model, hidden)
    np.testing.assert_allclose(logits[:, 2:], expected[:, 2:], rtol=1e-4, atol=1e-4)


def test_all_positions_scores_the_given_slots_and_without_head():
    model = _model(bert_head=False)
    assert not any("head" in w.path or "output_bias" in w.path for w in model.weights)
    logits = np.asarray(model({"item_ids": ITEM_IDS}, all_positions=True))
    hidden = np.asarray(model.backbone({"item_ids": ITEM_IDS})["sequence_output"])
    np.testing.assert_allclose(logits, hidden @ np.asarray(model.backbone.item_table()).T, rtol=1e-5, atol=1e-5)


def test_exclude_history():
    model = _model(exclude_history=True)
    logits = np.asarray(model({"item_ids": ITEM_IDS}))
    for row, ids in zip(logits, ITEM_IDS):
        assert np.all(row[ids[ids != 0]] == EXCLUDED_LOGIT)


def test_fit_learns_a_pattern_from_all_position_and_prefix_data():
    # Item t + 1 always follows item t: the masked item is predictable from its neighbours.
    starts = np.random.default_rng(0).integers(2, NUM_ITEMS - MAX_LEN - 1, size=128)
    sequences = (starts[:, None] + np.arange(MAX_LEN + 1)[None, :]).astype("int32")
    all_positions = tf.data.Dataset.from_tensor_slices(({"item_ids": sequences[:, :-1]}, sequences[:, 1:])).batch(32)
    keras.utils.set_random_seed(0)
    backbone = BERT4RecBackbone(**{**BACKBONE_KWARGS, "hidden_dim": 16}, dropout=0.0, attention_dropout=0.0)
    model = MaskedItemModel(backbone, mask_prob=0.4, seed=3)
    model.compile(optimizer=keras.optimizers.Adam(2e-2))
    history = model.fit(all_positions, epochs=10, verbose=0).history["loss"]
    assert history[-1] < 0.7 * history[0], history
    evaluation = tf.data.Dataset.from_tensor_slices(({"item_ids": sequences[:, :-1]}, sequences[:, -1])).batch(64)
    assert model.evaluate(evaluation, return_dict=True, verbose=0)["hr@5"] > 0.5
    # Prefix data (labels [batch]) trains too.
    prefix = tf.data.Dataset.from_tensor_slices(({"item_ids": sequences[:, 1:-1]}, sequences[:, -1])).batch(32)
    assert np.isfinite(model.fit(prefix.take(2), epochs=1, verbose=0).history["loss"][0])


def test_sample_weights_are_rejected_in_training():
    model = _model()
    model.compile(metrics=[])
    with pytest.raises(ValueError, match="sample weights"):
        model.train_on_batch({"item_ids": ITEM_IDS}, ITEM_IDS, sample_weight=np.ones(ITEM_IDS.shape, "float32"))


def test_serialization_and_save_reload(tmp_path):
    model = _model(mask_prob=0.25, ft_ratio=0.1, mask_behaviour_at_masked_slots=True)
    config = model.get_config()
    assert "objective" not in config and "train_on" not in config
    assert {k: config[k] for k in ("mask_prob", "ft_ratio", "mask_behaviour_at_masked_slots", "bert_head", "seed")} == {
        "mask_prob": 0.25,
        "ft_ratio": 0.1,
        "mask_behaviour_at_masked_slots": True,
        "bert_head": True,
        "seed": 3,
    }
    revived = MaskedItemModel.from_config(config)
    assert revived.get_config() == config
    # A config with the `train_on` of version 0.2.0 (which Cloze training ignores) loads too.
    assert MaskedItemModel.from_config({**config, "train_on": "last_position"}).get_config() == config
    randomize_weights(model.weights[:-1], scale=0.3)
    model.compile()
    restored = run_model_saving_test(model, {"item_ids": ITEM_IDS}, tmp_path)
    assert isinstance(restored, MaskedItemModel) and isinstance(restored.backbone, BERT4RecBackbone)
    np.testing.assert_allclose(np.asarray(restored.output_bias), np.asarray(model.output_bias))
    np.testing.assert_allclose(
        np.asarray(restored.backbone.mask_token_embedding.embeddings),
        np.asarray(model.backbone.mask_token_embedding.embeddings),
    )


def test_causal_next_item_model_is_unchanged_by_the_hooks():
    keras.utils.set_random_seed(0)
    model = NextItemModel(SASRecBackbone(**BACKBONE_KWARGS))
    hidden = np.asarray(model.backbone({"item_ids": ITEM_IDS})["sequence_output"])[:, -1]
    logits = np.asarray(model({"item_ids": ITEM_IDS}))
    expected = hidden @ np.asarray(model.backbone.item_table()).T
    expected[:, :2] = EXCLUDED_LOGIT
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_registry_builds_a_masked_item_model_for_cloze_backbones():
    schema = DatasetSchema(
        "tiny",
        features=[FeatureSpec("rating", "interaction", "categorical", vocab_size=7)],
        num_items=NUM_ITEMS,
        max_len=MAX_LEN,
    )
    params = {"hidden_dim": 8, "num_heads": 2, "ff_dim": 16, "num_layers": 1, "mask_prob": 0.2, "ft_ratio": 0.5}
    model = build_model("bert4rec", params, schema=schema, objective="prefix", exclude_history=True)
    assert isinstance(model, MaskedItemModel) and isinstance(model.backbone, BERT4RecBackbone)
    assert (model.mask_prob, model.ft_ratio, model.exclude_history) == (0.2, 0.5, True)
    assert model.backbone.num_layers == 1
    nova = build_model("nova_bert", {**params, "side_mask_token": False}, schema=schema)
    assert isinstance(nova, MaskedItemModel) and isinstance(nova.backbone, NOVABERTBackbone)
    assert nova.backbone.interaction_features == [{"name": "rating", "vocab_size": 7}]
    assert type(build_model("sasrec", {"hidden_dim": 8, "num_heads": 2}, schema=schema)) is NextItemModel
    with pytest.raises(ValueError, match="mask_prob"):
        build_model("sasrec", {"hidden_dim": 8, "num_heads": 2, "mask_prob": 0.2}, schema=schema)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"mask_prob": 0.0}, "mask_prob=0.0"),
        ({"mask_prob": 1.5}, "mask_prob=1.5"),
        ({"ft_ratio": -0.1}, "ft_ratio=-0.1"),
        ({"bert_head": 1}, "bert_head=1"),
        ({"mask_behaviour_at_masked_slots": "no"}, "mask_behaviour_at_masked_slots='no'"),
        ({"seed": 1.5}, "seed=1.5"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    backbone = BERT4RecBackbone(**BACKBONE_KWARGS)
    with pytest.raises(ValueError, match=bad):
        MaskedItemModel(backbone, **kwargs)


def test_rejects_a_backbone_without_the_cloze_task():
    with pytest.raises(ValueError, match="Cloze task"):
        MaskedItemModel(SASRecBackbone(**BACKBONE_KWARGS))


def test_mixed_precision_logits_are_float32():
    keras.utils.set_random_seed(0)
    backbone = BERT4RecBackbone(**BACKBONE_KWARGS, dtype="mixed_float16")
    model = MaskedItemModel(backbone, seed=0, dtype="mixed_float16")
    logits = model({"item_ids": ITEM_IDS})
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    training_logits = model({"item_ids": ITEM_IDS}, training=True)["logits"]
    assert keras.backend.standardize_dtype(training_logits.dtype) == "float32"
    assert np.all(np.isfinite(np.asarray(training_logits)))
