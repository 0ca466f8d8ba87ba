import keras
import numpy as np
import pytest
import tensorflow as tf
from decoupled_attention_reference import np_decoupled_attention
from helpers import (
    INTERACTION_FEATURES,
    ITEM_FEATURES,
    ITEM_IDS,
    NUM_ITEMS,
    RATINGS,
    SIDE_INIT_KWARGS,
    SIDE_INPUTS,
    assert_causal,
    assert_fit_trains,
    assert_gradients_reach_every_weight,
    assert_item_feature_tables,
    assert_old_config_key_loads,
    assert_padding_invariant,
    item_feature_tables,
    np_attention_mask,
    np_dense,
    np_gelu,
    np_layer_norm,
    np_softmax,
    randomize_weights,
    run_backbone_test,
    run_model_saving_test,
    run_serialization_test,
    side_feature_batches,
)

from tfsidefuse.layers import DecoupledAttention
from tfsidefuse.models import COMIFAlignmentHead, COMIFBackbone, NextItemModel
from tfsidefuse.models.registry import BACKBONES, side_feature_params

INPUTS = SIDE_INPUTS
INIT_KWARGS = SIDE_INIT_KWARGS
#: The arguments of the IAA and UPA objectives (`COMIFAlignmentHead`); the others are the backbone's.
HEAD_KWARGS = {"upa_num_negatives": 3, "seed": 7}
HEAD_ARGS = (
    "iaa_weight",
    "iaa_scope",
    "iaa_multi_valued",
    "upa_weight",
    "upa_num_negatives",
    "upa_negatives",
    "upa_stop_gradient",
    "seed",
)
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0}
# Next item of every slot; 0 where there is no target.
LABELS = np.array([[0, 0, 7, 9, 3, 11], [4, 5, 6, 2, 8, 13]], dtype="int32")


def _tables() -> dict[str, np.ndarray]:
    # Item 13 has no attributes.
    return item_feature_tables(without_attributes=(0, 13))


def _backbone(**kwargs) -> COMIFBackbone:
    keras.utils.set_random_seed(0)
    backbone = COMIFBackbone(**{**INIT_KWARGS, "name": "comif", **kwargs})
    backbone.set_item_feature_tables(_tables())
    return backbone


def _randomized(**kwargs) -> COMIFBackbone:
    backbone = _backbone(**{**NO_DROPOUT, **kwargs})
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights, scale=0.5)
    return backbone


def _head(**kwargs) -> COMIFAlignmentHead:
    return COMIFAlignmentHead(**{**HEAD_KWARGS, **kwargs})


def _split(kwargs: dict) -> tuple[dict, dict]:
    """`kwargs` as the backbone's and the head's."""
    backbone = {k: v for k, v in kwargs.items() if k not in HEAD_ARGS}
    return backbone, {k: v for k, v in kwargs.items() if k in HEAD_ARGS}


# ----------------------------------------------------------------------------------------------------------------------
# Plain-numpy reference (docs/models.md#comif)
# ----------------------------------------------------------------------------------------------------------------------


def _np_pool(vectors: np.ndarray, valid: np.ndarray, pooling: str) -> np.ndarray:
    masked = vectors * valid[..., None]
    if pooling == "sum":
        return masked.sum(axis=-2)
    if pooling == "mean":
        return masked.sum(axis=-2) / np.maximum(valid.sum(axis=-1), 1)[..., None]
    pooled = np.where(valid[..., None], vectors, -np.inf).max(axis=-2)
    return np.where(valid.any(axis=-1)[..., None], pooled, 0.0)


def _np_fusion(backbone: COMIFBackbone, features: list[np.ndarray]) -> np.ndarray:
    features = [f.astype("float64") for f in features]
    fusion = backbone.embedding_fusion
    if backbone.fusion == "add":
        return np.sum(features, axis=0)
    if backbone.fusion == "concat":
        return np_dense(fusion.projection, np.concatenate(features, axis=-1))
    if backbone.gate_scorer == "linear":
        energies = [f @ np.asarray(fusion.gate_dense.kernel)[:, 0] for f in features]
    else:
        kernel, bias = np.asarray(fusion.gate_hidden_dense.kernel), np.asarray(fusion.gate_hidden_dense.bias)
        energies = [
            np.maximum(f @ kernel + bias, 0) @ np.asarray(fusion.gate_output_dense.kernel)[:, 0] for f in features
        ]
    gates = np_softmax(np.stack(energies, axis=-1))
    return sum(gates[..., k : k + 1] * f for k, f in enumerate(features))


def _np_attributes(backbone: COMIFBackbone, item_ids: np.ndarray, pooling: str) -> list[np.ndarray]:
    """Pooled attribute embeddings of `item_ids` (any shape), one per item feature."""
    outputs = []
    for feature, embedding in zip(ITEM_FEATURES, backbone.side_information_embedding.item_feature_embeddings):
        attribute_ids = _tables()[feature["name"]][item_ids]
        outputs.append(_np_pool(np.asarray(embedding.embeddings)[attribute_ids], attribute_ids != 0, pooling))
    return outputs


def _np_item_table(backbone: COMIFBackbone) -> np.ndarray:
    """Eq. 7: `F_emb(E_id, A_1, .., A_p)` over every item."""
    table = np.asarray(backbone.item_embedding.embeddings).astype("float64")
    if not backbone.prediction_fusion:
        return table
    pooling = backbone.pooling if backbone.prediction_pooling == "same" else backbone.prediction_pooling
    return _np_fusion(backbone, [table] + _np_attributes(backbone, np.arange(NUM_ITEMS), pooling))


def _np_backbone(
    backbone: COMIFBackbone, item_ids: np.ndarray, ratings: np.ndarray, position_ids: np.ndarray | None = None
) -> np.ndarray:
    """Eqs. 5-6 at inference, from the backbone's weights; `position_ids` replaces the true positions (UPA)."""
    item_vectors = np.asarray(backbone.item_embedding.embeddings)[item_ids]
    x = _np_fusion(backbone, [item_vectors] + _np_attributes(backbone, item_ids, backbone.pooling))
    table = np.asarray(backbone.position_embedding.embeddings).astype("float64")
    true_positions = np.clip(np.cumsum(item_ids != 0, axis=1) - 1, 0, None)
    if backbone.position_at_input:
        x = x + table[true_positions]
    positions = table[true_positions if position_ids is None else position_ids]
    rating_table = np.asarray(backbone.side_information_embedding.interaction_feature_embeddings[0].embeddings)
    behaviors = [rating_table[ratings] * (ratings != 0)[..., None]]
    if backbone.input_layer_norm:
        x = np_layer_norm(backbone.embeddings_layer_norm, x)
    mask = np_attention_mask(item_ids, causal=True)
    for block in backbone.transformer_layers:
        attended, _ = np_decoupled_attention(block.self_attention, x, behaviors, positions, mask)
        hidden = np_layer_norm(block.attention_layer_norm, x + attended)
        feedforward = np_dense(
            block.feedforward_output_dense, np_gelu(np_dense(block.feedforward_intermediate_dense, hidden))
        )
        x = np_layer_norm(block.feedforward_layer_norm, hidden + feedforward)
    return x


def _np_iaa(backbone: COMIFBackbone, items: list[int], multi_valued: str = "uniform") -> float:
    """Eq. 9 over `items`: softmax over the attribute vocabulary without the pad attribute, mean per feature."""
    item_table = np.asarray(backbone.item_embedding.embeddings).astype("float64")
    losses = []
    for feature, embedding in zip(ITEM_FEATURES, backbone.side_information_embedding.item_feature_embeddings):
        logits = item_table @ np.asarray(embedding.embeddings).astype("float64").T
        log_probabilities = np.log(np_softmax(logits[:, 1:]))  # column 0 (pad) is never a candidate
        per_item = []
        for item in items:
            values = [v for v in _tables()[feature["name"]][item] if v != 0]
            if values:
                terms = [-log_probabilities[item, v - 1] for v in values]
                per_item.append(np.mean(terms) if multi_valued == "uniform" else np.sum(terms))
        losses.append(np.mean(per_item))
    return float(np.mean(losses))


def _batch_items(labels: np.ndarray) -> list[int]:
    return sorted((set(ITEM_IDS.ravel()) | set(np.ravel(labels))) - {0})


def _np_upa(backbone: COMIFBackbone, head: COMIFAlignmentHead, labels: np.ndarray) -> float:
    """Eq. 10 with the negatives the head draws next (its seed state is restored)."""
    k = head.upa_num_negatives
    tiled_ids, tiled_ratings = np.tile(ITEM_IDS, (k, 1)), np.tile(RATINGS, (k, 1))
    state = np.array(head.seed_generator.state)
    tiled = {"item_ids": tiled_ids, "rating": tiled_ratings}
    random_ids = head.random_behavior_ids(tiled, tiled_ids != 0, backbone)
    head.seed_generator.state.assign(state)
    position_ids, ratings = (np.asarray(ids) for ids in random_ids)
    negatives = _np_backbone(backbone, tiled_ids, ratings, position_ids).reshape((k,) + ITEM_IDS.shape + (-1,))
    hidden = _np_backbone(backbone, ITEM_IDS, RATINGS)
    if labels.ndim == 1:
        hidden, negatives = hidden[:, -1], negatives[:, :, -1]
    targets = _np_item_table(backbone)[labels]
    logits = np.concatenate([(targets * hidden).sum(-1)[None], (targets[None] * negatives).sum(-1)], axis=0)
    per_slot = -np.log(np_softmax(np.moveaxis(logits, 0, -1))[..., 0])
    return float(per_slot[labels != 0].mean())


# ----------------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------------


def test_backbone_behaviors(tmp_path):
    run_backbone_test(COMIFBackbone, INIT_KWARGS, INPUTS, tmp_path)


def test_registered_with_both_feature_levels():
    assert BACKBONES["comif"] is COMIFBackbone
    assert side_feature_params(COMIFBackbone) == ("item_features", "interaction_features")


def test_defaults_and_weights():
    backbone = COMIFBackbone(num_items=30)
    backbone({"item_ids": ITEM_IDS})
    config = {**backbone.get_config(), **COMIFAlignmentHead().get_config()}
    defaults = {
        "max_len": 50,
        "hidden_dim": 128,
        "num_layers": 3,
        "num_heads": 4,
        "fusion": "add",
        "attention_fusion": "concat",
        "input_layer_norm": True,
        "position_at_input": False,
        "prediction_fusion": True,
        "prediction_pooling": "same",
        "iaa_weight": 0.4,
        "iaa_scope": "batch",
        "iaa_multi_valued": "uniform",
        "upa_weight": 0.4,
        "upa_num_negatives": 4,
        "upa_negatives": "permute",
        "upa_stop_gradient": False,
    }
    assert {k: config[k] for k in defaults} == defaults

    backbone = _backbone()
    backbone(INPUTS)
    attention = backbone.transformer_layers[0].self_attention
    assert isinstance(attention, DecoupledAttention)
    # The rating is a decoupled score source of full width; the position is the position source.
    assert attention.attribute_dims == [8] and attention.fusion == "concat"
    # Concat of the rating, item and position key rows: [3 * max_len, max_len].
    assert tuple(attention.score_fusion.projection.kernel.shape) == (3 * 10, 10)
    # Item, position, 2 attribute and 1 rating tables; LN; per block: attention (6 + 2 dense, the concat
    # projection), the block's 2 LN and 2 feed-forward dense.
    assert len(backbone.trainable_weights) == 5 + 2 + 2 * (2 * 8 + 2 + 8)
    assert len(backbone.non_trainable_weights) == 2  # the item -> attribute ids tables


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"fusion": "concat", "attention_fusion": "gate", "pooling": "mean"},
        {"fusion": "gate", "gate_scorer": "mlp", "attention_fusion": "sum", "pooling": "max"},
        {"position_at_input": True, "input_layer_norm": False},
    ],
)
def test_matches_numpy_reference(kwargs):
    backbone = _randomized(**kwargs)
    real = ITEM_IDS != 0
    expected = _np_backbone(backbone, ITEM_IDS, RATINGS)
    np.testing.assert_allclose(np.asarray(backbone(INPUTS)["sequence_output"])[real], expected[real], atol=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"fusion": "concat"},
        {"fusion": "gate", "pooling": "max"},
        {"pooling": "mean", "prediction_pooling": "sum"},
        {"prediction_pooling": "mean"},
        {"prediction_fusion": False},
    ],
)
def test_item_table_fuses_the_attributes_of_every_item(kwargs):
    backbone = _randomized(**kwargs)
    table = np.asarray(backbone.item_table())
    assert table.shape == (NUM_ITEMS, 8)
    np.testing.assert_allclose(table, _np_item_table(backbone), atol=1e-5)
    # The scored logits are hidden states against this table.
    model = NextItemModel(backbone)
    logits = np.asarray(model(INPUTS, training=False, all_positions=True))
    np.testing.assert_allclose(logits, np.asarray(backbone(INPUTS)["sequence_output"]) @ table.T, atol=1e-4)
    if kwargs.get("fusion", "add") == "add" and backbone.prediction_fusion:
        # Item 13 has no attributes: its row is its id embedding alone.
        np.testing.assert_allclose(table[13], np.asarray(backbone.item_embedding.embeddings)[13], atol=1e-6)


@pytest.mark.parametrize("attention_fusion", ["concat", "gate"])
@pytest.mark.parametrize("changed_keys", [("item_ids",), ("rating",)])
def test_causality(attention_fusion, changed_keys):
    vocab_sizes = {"item_ids": NUM_ITEMS, "rating": INTERACTION_FEATURES[0]["vocab_size"]}
    backbone = _randomized(attention_fusion=attention_fusion)
    assert_causal(backbone, INPUTS, {k: vocab_sizes[k] for k in changed_keys}, atol=1e-5)


@pytest.mark.parametrize("attention_fusion", ["concat", "gate", "sum"])
def test_padding_invariance(attention_fusion):
    assert_padding_invariant(_randomized(attention_fusion=attention_fusion), INPUTS)


def _training_loss(backbone: COMIFBackbone, head: COMIFAlignmentHead, labels: np.ndarray = LABELS):
    outputs = backbone(INPUTS, training=True)
    logits = keras.ops.matmul(outputs["sequence_output"], keras.ops.transpose(backbone.item_table()))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)(labels, logits)
    return loss + sum(head(outputs, INPUTS, labels, backbone=backbone).values())


@pytest.mark.parametrize("attention_fusion", ["concat", "gate"])
def test_gradients_reach_every_weight_through_the_training_loss(attention_fusion):
    backbone = _backbone(attention_fusion=attention_fusion, **NO_DROPOUT)
    backbone(INPUTS)
    head = _head()
    names = [w.path for w in backbone.trainable_variables]
    assert sum("side_information_embedding" in n for n in names) == 3
    assert_gradients_reach_every_weight(backbone.trainable_variables, lambda: _training_loss(backbone, head))


def test_gradients_of_each_part():
    backbone = _backbone(**NO_DROPOUT)
    backbone(INPUTS)
    side = backbone.side_information_embedding
    attribute_tables = [e.embeddings for e in side.item_feature_embeddings]
    # Through the scored table alone.
    projection = np.random.default_rng(0).normal(size=(NUM_ITEMS, 8)).astype("float32")
    assert_gradients_reach_every_weight(
        attribute_tables + [backbone.item_embedding.embeddings],
        lambda: keras.ops.sum(backbone.item_table() * projection),
    )
    head = _head()
    # IAA alone: the item and attribute tables.
    assert_gradients_reach_every_weight(
        attribute_tables + [backbone.item_embedding.embeddings], lambda: head.iaa_loss(INPUTS, LABELS, backbone)
    )
    # UPA alone: every weight (attributes through the input and the target's fused embedding).
    assert_gradients_reach_every_weight(
        backbone.trainable_variables,
        lambda: head.upa_loss(INPUTS, LABELS, backbone(INPUTS, training=True)["sequence_output"], backbone),
    )


@pytest.mark.parametrize("kwargs", [{}, {"iaa_scope": "all_items"}, {"iaa_multi_valued": "sum", "iaa_weight": 1.2}])
def test_iaa_matches_numpy(kwargs):
    backbone = _randomized()
    head = _head(**kwargs)
    items = _batch_items(LABELS) if head.iaa_scope == "batch" else list(range(NUM_ITEMS))
    expected = _np_iaa(backbone, items, head.iaa_multi_valued)
    np.testing.assert_allclose(float(head.iaa_loss(INPUTS, LABELS, backbone)), expected, rtol=1e-5)
    losses = head(backbone(INPUTS), INPUTS, LABELS, backbone=backbone)
    np.testing.assert_allclose(float(losses["iaa"]), head.iaa_weight * expected, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, labels",
    [
        ({}, LABELS),
        ({}, LABELS[:, -1]),
        ({"upa_negatives": "uniform", "upa_num_negatives": 1}, LABELS),
        ({"attention_fusion": "gate", "upa_stop_gradient": True}, LABELS),
    ],
)
def test_upa_matches_numpy(kwargs, labels):
    backbone_kwargs, head_kwargs = _split(kwargs)
    backbone, head = _randomized(**backbone_kwargs), _head(**head_kwargs)
    expected = _np_upa(backbone, head, labels)
    hidden = backbone(INPUTS)["sequence_output"]
    np.testing.assert_allclose(float(head.upa_loss(INPUTS, labels, hidden, backbone)), expected, rtol=1e-4)


@pytest.mark.parametrize("upa_negatives", ["permute", "uniform"])
def test_random_behaviors_keep_the_padding(upa_negatives):
    backbone, head = _backbone(), _head(upa_negatives=upa_negatives)
    ids = np.tile(ITEM_IDS, (50, 1))
    ratings = np.tile(RATINGS, (50, 1))
    random_ids = head.random_behavior_ids({"rating": ratings}, ids != 0, backbone)
    positions, random_ratings = (np.asarray(x) for x in random_ids)
    real = ids != 0
    assert np.all(positions[~real] == 0) and np.all(random_ratings[~real] == 0)
    assert positions.min() >= 0 and positions.max() < 10
    assert random_ratings[real].min() >= (1 if upa_negatives == "permute" else 2) and random_ratings[real].max() < 6
    if upa_negatives == "permute":
        for row in range(len(ids)):
            length = real[row].sum()
            np.testing.assert_array_equal(np.sort(positions[row, real[row]]), np.arange(length))
            np.testing.assert_array_equal(np.sort(random_ratings[row, real[row]]), np.sort(ratings[row, real[row]]))
    # Not the original order (50 windows: a coincidence is out of the question).
    assert not np.array_equal(
        positions[real], np.tile(np.clip(np.cumsum(ITEM_IDS != 0, 1) - 1, 0, None), (50, 1))[real]
    )


def test_auxiliary_losses_are_added_in_training_only():
    plain = NextItemModel(_backbone(num_layers=1, **NO_DROPOUT), heads=[_head(iaa_weight=0.0, upa_weight=0.0)])
    weighted = NextItemModel(_backbone(num_layers=1, **NO_DROPOUT), heads=[_head(iaa_weight=0.8, upa_weight=1.2)])
    for model in (plain, weighted):
        model(INPUTS)
    randomize_weights(plain.backbone.trainable_weights, scale=0.3)
    for w, v in zip(weighted.backbone.trainable_weights, plain.backbone.trainable_weights):
        w.assign(v)
    assert plain.heads[0](plain.backbone(INPUTS), INPUTS, LABELS, backbone=plain.backbone) == {}
    backbone = weighted.backbone
    expected = 0.8 * _np_iaa(backbone, _batch_items(LABELS)) + 1.2 * _np_upa(backbone, weighted.heads[0], LABELS)
    for model in (plain, weighted):
        model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[], run_eagerly=True)
    losses = [m.train_on_batch(INPUTS, LABELS, return_dict=True)["loss"] for m in (plain, weighted)]
    np.testing.assert_allclose(losses[1], losses[0] + expected, rtol=1e-4)
    # Evaluation reports the next-item loss alone.
    evaluated = [m.test_on_batch(INPUTS, LABELS[:, -1], return_dict=True)["loss"] for m in (plain, weighted)]
    np.testing.assert_allclose(evaluated[1], evaluated[0], rtol=1e-6)


def test_each_flag_changes_the_output_or_a_loss():
    # One block keeps the many variants fast.
    reference = _randomized(num_layers=1)
    shared = {w.path: np.asarray(w) for w in reference.trainable_weights}

    def variant(**kwargs) -> tuple[COMIFBackbone, COMIFAlignmentHead]:
        backbone_kwargs, head_kwargs = _split(kwargs)
        backbone = _backbone(**{**NO_DROPOUT, "num_layers": 1, **backbone_kwargs})
        backbone(INPUTS)
        randomize_weights(backbone.trainable_weights, scale=0.5, seed=2)
        for w in backbone.trainable_weights:
            if w.path in shared and tuple(w.shape) == shared[w.path].shape:
                w.assign(shared[w.path])
        return backbone, _head(**head_kwargs)

    def results(model: tuple[COMIFBackbone, COMIFAlignmentHead], key: str) -> np.ndarray:
        backbone, head = model
        if key == "hidden":
            return np.asarray(backbone(INPUTS)["sequence_output"])
        if key == "table":
            return np.asarray(backbone.item_table())
        if key == "iaa":
            return np.asarray(head.iaa_loss(INPUTS, LABELS, backbone))
        state = np.array(head.seed_generator.state)
        outputs = backbone(INPUTS)
        if key == "upa":
            value = np.asarray(head.upa_loss(INPUTS, LABELS, outputs["sequence_output"], backbone))
        else:
            value = {k: float(v) for k, v in head(outputs, INPUTS, LABELS, backbone=backbone).items()}
        head.seed_generator.state.assign(state)
        return value

    reference = variant()
    base = {key: results(reference, key) for key in ("hidden", "table", "iaa", "upa", "aux")}
    changes = {
        "hidden": [
            {"fusion": "concat"},
            {"fusion": "gate"},
            {"pooling": "mean"},
            {"pooling": "max"},
            {"attention_fusion": "sum"},
            {"attention_fusion": "gate"},
            {"score_scale": "hidden_dim"},
            {"input_layer_norm": False},
            {"position_at_input": True},
        ],
        "table": [{"prediction_fusion": False}, {"prediction_pooling": "mean"}],
        "iaa": [{"iaa_scope": "all_items"}, {"iaa_multi_valued": "sum"}],
        "upa": [{"upa_num_negatives": 2}, {"upa_negatives": "uniform"}, {"seed": 8}],
    }
    for key, variants in changes.items():
        for kwargs in variants:
            value = results(variant(**kwargs), key)
            assert not np.allclose(value, base[key], atol=1e-5), (key, kwargs)
    gated = variant(fusion="gate")
    assert not np.allclose(results(variant(fusion="gate", gate_scorer="mlp"), "hidden"), results(gated, "hidden"))
    # Same inputs and pooling, but "same" follows the input pooling.
    assert np.allclose(results(variant(prediction_pooling="sum"), "table"), base["table"])
    # The weights scale the auxiliary losses.
    scaled = results(variant(iaa_weight=1.6, upa_weight=0.8), "aux")
    np.testing.assert_allclose(
        [scaled["iaa"], scaled["upa"]], [4 * base["aux"]["iaa"], 2 * base["aux"]["upa"]], rtol=1e-5
    )
    assert results(variant(iaa_weight=0, upa_weight=0.0), "aux") == {}

    # Stopping the gradient of the negatives changes what UPA trains, not its value.
    def upa_gradient(model):
        backbone, head = model
        state = np.array(head.seed_generator.state)
        with tf.GradientTape() as tape:
            loss = head.upa_loss(INPUTS, LABELS, backbone(INPUTS)["sequence_output"], backbone)
        head.seed_generator.state.assign(state)
        gradient = tape.gradient(loss, backbone.position_embedding.embeddings.value)
        return float(loss), np.asarray(tf.convert_to_tensor(gradient))

    (loss, gradient), (stopped_loss, stopped_gradient) = (
        upa_gradient(variant()),
        upa_gradient(variant(upa_stop_gradient=True)),
    )
    np.testing.assert_allclose(stopped_loss, loss, rtol=1e-6)
    assert not np.allclose(stopped_gradient, gradient)


def test_no_item_features_means_no_iaa():
    backbone = COMIFBackbone(num_items=NUM_ITEMS, max_len=10, hidden_dim=8, num_heads=2, ff_dim=16)
    outputs = backbone({"item_ids": ITEM_IDS})
    losses = COMIFAlignmentHead()(outputs, {"item_ids": ITEM_IDS}, LABELS, backbone=backbone)
    assert set(losses) == {"upa"}
    np.testing.assert_allclose(np.asarray(backbone.item_table()), np.asarray(backbone.item_embedding.embeddings))


def test_save_and_reload_keeps_predictions_and_tables(tmp_path):
    backbone = _randomized(fusion="gate")
    model = NextItemModel(backbone, heads=[_head()])
    assert "table" not in str(backbone.get_config())
    restored = run_model_saving_test(model, INPUTS, tmp_path)
    assert isinstance(restored.backbone, COMIFBackbone)
    assert restored.backbone.get_config() == backbone.get_config()
    assert_item_feature_tables(restored.backbone, _tables())
    np.testing.assert_allclose(np.asarray(restored.backbone.item_table()), np.asarray(backbone.item_table()), atol=1e-6)


def test_config_with_the_old_attention_scale_key_loads():
    """Version 0.2.0 saved `score_scale` as `attention_scale`; such a config still builds the same backbone."""
    restored = assert_old_config_key_loads(_backbone(score_scale="hidden_dim"), "attention_scale", "score_scale")
    # The attention layers get the scale.
    assert restored.block_attention(0).score_scale == "hidden_dim"


def test_fit_with_an_interaction_feature():
    keras.utils.set_random_seed(0)
    backbone = _backbone(dropout=0.1, attention_dropout=0.1, num_layers=1)
    model = NextItemModel(backbone, heads=[_head(upa_num_negatives=2)])
    inputs, labels = side_feature_batches()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=[], run_eagerly=True)
    attribute_tables = [e.embeddings for e in backbone.side_information_embedding.item_feature_embeddings]
    assert_fit_trains(model, inputs, labels, attribute_tables)


def test_missing_interaction_feature_is_named():
    with pytest.raises(ValueError, match="'rating'"):
        _backbone()({"item_ids": ITEM_IDS})


def test_set_item_feature_tables_validates():
    backbone = COMIFBackbone(**INIT_KWARGS)
    with pytest.raises(ValueError, match=r"lacks the item feature\(s\) \['brand'\]"):
        backbone.set_item_feature_tables({"category": _tables()["category"]})


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"num_items": 2}, "num_items=2"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"fusion": "mean"}, "fusion='mean'"),
        ({"gate_scorer": "deep"}, "gate_scorer='deep'"),
        ({"pooling": "median"}, "pooling='median'"),
        ({"attention_fusion": "mlp"}, "attention_fusion='mlp'"),
        ({"score_scale": "d"}, "score_scale='d'"),
        ({"input_layer_norm": "yes"}, "input_layer_norm='yes'"),
        ({"position_at_input": 1}, "position_at_input=1"),
        ({"prediction_fusion": None}, "prediction_fusion=None"),
        ({"prediction_pooling": "max"}, "prediction_pooling='max'"),
        ({"interaction_features": [{"name": "brand", "vocab_size": 3}]}, "duplicate"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        COMIFBackbone(**{**INIT_KWARGS, **kwargs})


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"iaa_weight": -0.4}, "iaa_weight=-0.4"),
        ({"iaa_scope": "epoch"}, "iaa_scope='epoch'"),
        ({"iaa_multi_valued": "first"}, "iaa_multi_valued='first'"),
        ({"upa_weight": "0.4"}, "upa_weight='0.4'"),
        ({"upa_num_negatives": 0}, "upa_num_negatives=0"),
        ({"upa_negatives": "shuffle"}, "upa_negatives='shuffle'"),
        ({"upa_stop_gradient": "no"}, "upa_stop_gradient='no'"),
        ({"seed": 1.5}, "seed=1.5"),
    ],
)
def test_invalid_head_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        COMIFAlignmentHead(**kwargs)


def test_head_config_round_trip():
    head = COMIFAlignmentHead(iaa_weight=0.8, iaa_scope="all_items", upa_negatives="uniform", seed=3)
    for key in HEAD_ARGS:
        assert key in head.get_config()
    run_serialization_test(head)
