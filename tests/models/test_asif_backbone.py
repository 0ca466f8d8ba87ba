import os
import sys

import keras
import numpy as np
import pytest
from helpers import (
    INTERACTION_FEATURES,
    ITEM_FEATURES,
    NUM_ITEMS,
    RATINGS,
    SIDE_INIT_KWARGS,
    assert_causal,
    assert_fit_trains,
    assert_gradients_reach_every_weight,
    assert_item_feature_tables,
    assert_old_config_key_loads,
    assert_padding_invariant,
    gradients,
    item_feature_tables,
    np_attention_mask,
    np_dense,
    np_gelu,
    np_layer_norm,
    randomize_weights,
    run_backbone_test,
    run_model_saving_test,
    run_serialization_test,
    side_feature_batches,
)

from tfsidefuse.models import ASIFAlignmentHead, ASIFBackbone, NextItemModel
from tfsidefuse.models.registry import BACKBONES, side_feature_params

# The plain-numpy references of the layers this model is made of.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "layers"))
from test_fused_attention import np_fused_attention  # noqa: E402
from test_orthogonal_basis import np_qr_basis  # noqa: E402

INIT_KWARGS = SIDE_INIT_KWARGS
# Item 5 is repeated in the first window; item 1 (OOV) has no attributes.
ITEM_IDS = np.array([[0, 0, 5, 7, 5, 3], [3, 1, 5, 6, 2, 8]], dtype="int32")
REAL = ITEM_IDS != 0
INPUTS = {"item_ids": ITEM_IDS, "rating": RATINGS}
LABELS = np.where(REAL, np.concatenate([ITEM_IDS[:, 1:], [[4], [9]]], axis=1), 0).astype("int32")
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0}


def _tables() -> dict[str, np.ndarray]:
    # The padding and OOV ids have no attributes.
    return item_feature_tables(without_attributes=(0, 1))


def _backbone(**kwargs) -> ASIFBackbone:
    keras.utils.set_random_seed(0)
    backbone = ASIFBackbone(**{**INIT_KWARGS, "name": "asif", **kwargs})
    backbone.set_item_feature_tables(_tables())
    return backbone


def _randomized(**kwargs) -> ASIFBackbone:
    backbone = _backbone(**NO_DROPOUT, **kwargs)
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights)
    return backbone


def _np_side_embeddings(backbone: ASIFBackbone, item_ids: np.ndarray, ratings: np.ndarray) -> list[np.ndarray]:
    """Pooled attribute embeddings (item features), then the rating embedding."""
    side = backbone.side_information_embedding
    features = []
    for feature, embedding in zip(ITEM_FEATURES, side.item_feature_embeddings):
        ids = _tables()[feature["name"]][item_ids]
        valid = (ids != 0)[..., None]
        summed = (np.asarray(embedding.embeddings)[ids] * valid).sum(axis=-2)
        features.append(summed / (valid.sum(axis=-2) + 1e-8) if backbone.pooling == "mean" else summed)
    rating = np.asarray(side.interaction_feature_embeddings[0].embeddings)[ratings] * (ratings != 0)[..., None]
    return [f.astype("float64") for f in features + [rating]]


def _np_basis(basis) -> np.ndarray:
    kernel = np.asarray(basis.kernel)
    return np_qr_basis(kernel) if basis.mode == "qr" else kernel.astype("float64")


def _np_backbone(backbone: ASIFBackbone, item_ids: np.ndarray, ratings: np.ndarray) -> np.ndarray:
    """docs/models.md#asif at inference, from the backbone's weights."""
    attributes = _np_side_embeddings(backbone, item_ids, ratings)
    real = item_ids != 0
    position = np.asarray(backbone.position_embedding.embeddings)[np.clip(np.cumsum(real, axis=1) - 1, 0, None)]
    position = position.astype("float64")
    x = np.asarray(backbone.item_embedding.embeddings)[item_ids].astype("float64")
    if not backbone.untied_position:
        x = x + position
    x = np_layer_norm(backbone.embeddings_layer_norm, x)
    mask = np_attention_mask(item_ids, causal=True)

    def update(residual, value, norms, i):
        if backbone.side_stream_update == "replace":
            return value
        if backbone.side_stream_update == "residual":
            return residual + value
        return np_layer_norm(norms[i], residual + value)

    for i, block in enumerate(backbone.transformer_layers):
        attention = block.self_attention
        basis = None
        if backbone.hie_bases:
            basis = _np_basis(backbone.hie_bases[0 if backbone.share_hie_basis else i])
        attended, side = np_fused_attention(attention, x, attributes, position, mask, basis)
        hidden = np_layer_norm(block.attention_layer_norm, x + attended)
        feedforward = np_dense(
            block.feedforward_output_dense, np_gelu(np_dense(block.feedforward_intermediate_dense, hidden))
        )
        x = np_layer_norm(block.feedforward_layer_norm, hidden + feedforward)
        if "attribute" in side:
            attributes = [update(side["attribute_input"], side["attribute"], backbone.attribute_stream_norms, i)]
        if "position" in side:
            position = update(position, side["position"], backbone.position_stream_norms, i)
    return x


def _np_alignment(backbone: ASIFBackbone, head: ASIFAlignmentHead, item_ids: np.ndarray) -> float:
    """`L_co` (docs/models.md#asif-losses) written with loops, from the raw embeddings."""
    x = np.asarray(backbone.item_embedding.embeddings)[item_ids].astype("float64")
    a = sum(_np_side_embeddings(backbone, item_ids, RATINGS)[: len(ITEM_FEATURES)])
    valid = (item_ids != 0) & (np.sum(a**2, axis=-1) > 0)
    d = x.shape[-1]
    if head.rsa_scope == "sequence":
        groups = [(x[b], a[b], item_ids[b], valid[b]) for b in range(len(item_ids))]
    else:
        groups = [(x.reshape(-1, d), a.reshape(-1, d), item_ids.reshape(-1), valid.reshape(-1))]
    tau, exclude = head.rsa_temperature, head.rsa_exclude_repeats
    dedupe = exclude and head.rsa_scope == "batch"
    total, rows = 0.0, 0
    for gx, ga, gids, gvalid in groups:
        gx = gx / (np.linalg.norm(gx, axis=-1, keepdims=True) + 1e-8)
        ga = ga / (np.linalg.norm(ga, axis=-1, keepdims=True) + 1e-8)
        slots = [t for t in range(len(gids)) if gvalid[t]]
        first = {t for t in slots if all(gids[k] != gids[t] for k in slots if k < t)}
        for t in slots:
            if dedupe and t not in first:
                continue
            keys = [j for j in slots if j == t or not exclude or gids[j] != gids[t]]
            if dedupe:
                keys = [j for j in keys if j == t or j in first]
            for anchor, others in ((gx, ga), (ga, gx)):
                scores = np.array([anchor[t] @ others[j] / tau for j in keys])
                total += -(anchor[t] @ others[t] / tau - np.log(np.sum(np.exp(scores))))
            rows += 1
    if head.rsa_reduction == "mean_rows":
        return total / (2 * max(rows, 1))
    return total / (2 * len(item_ids))


def _model(backbone: ASIFBackbone, **head_kwargs) -> NextItemModel:
    model = NextItemModel(backbone, heads=[ASIFAlignmentHead(**head_kwargs)])
    model.compile(metrics=[])
    return model


def test_backbone_behaviors(tmp_path):
    run_backbone_test(ASIFBackbone, INIT_KWARGS, INPUTS, tmp_path)


def test_registry_and_defaults():
    assert BACKBONES["asif"] is ASIFBackbone
    assert side_feature_params(ASIFBackbone) == ("item_features", "interaction_features")
    backbone = _backbone()
    backbone(INPUTS)
    config = {**backbone.get_config(), **ASIFAlignmentHead().get_config()}
    defaults = {
        "fusion": "add",
        "pooling": "mean",
        "use_rsa": True,
        "use_hie": True,
        "update_position_stream": True,
        "fused_attention": "fused",
        "rsa_weight": 0.1,
        "rsa_temperature": 0.1,
        "rsa_reduction": "mean_rows",
        "rsa_scope": "sequence",
        "rsa_source": "embeddings",
        "hie_basis": "qr",
        "hie_activation": "sigmoid",
        "share_hie_basis": False,
        "untied_position": True,
        "update_attribute_stream": True,
        "side_stream_update": "residual_norm",
        "score_scale": "head_dim",
        "tie_output_table": True,
    }
    assert {k: config[k] for k in defaults} == defaults
    assert backbone.effective_hie_rank == 2 and len(backbone.hie_bases) == 2
    assert backbone.item_table() is backbone.item_embedding.embeddings
    # Layer 0 fuses the item with three side streams; the last layer feeds no side stream.
    assert backbone.transformer_layers[0].self_attention.num_attribute_inputs == 3
    assert backbone.transformer_layers[1].self_attention.num_attribute_inputs == 1
    assert backbone.transformer_layers[0].self_attention.position_output
    assert not backbone.transformer_layers[1].self_attention.attribute_output
    assert len(backbone.non_trainable_weights) == 2  # the item -> attribute ids tables
    paths = [w.path for w in backbone.weights]
    assert len(paths) == len(set(paths))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"fusion": "gate", "update_attribute_stream": False, "hie_activation": "tanh", "pooling": "sum"},
        {"fusion": "concat", "side_stream_update": "residual", "hie_basis": "soft", "share_hie_basis": True},
        {"untied_position": False, "fused_attention": "decoupled", "num_layers": 3},
        {
            "fused_attention": "item_only",
            "side_stream_update": "replace",
            "score_scale": "double_head_dim",
            "hie_basis": "fixed",
            "hie_rank": 3,
        },
        {"fused_attention": "vanilla", "update_position_stream": False},
    ],
)
def test_matches_numpy_reference(kwargs):
    backbone = _randomized(**kwargs)
    expected = _np_backbone(backbone, ITEM_IDS, RATINGS)
    np.testing.assert_allclose(np.asarray(backbone(INPUTS)["sequence_output"])[REAL], expected[REAL], atol=2e-4)


@pytest.mark.parametrize("changed_keys", [("item_ids",), ("rating",)])
def test_causality(changed_keys):
    vocab_sizes = {"item_ids": NUM_ITEMS, "rating": INTERACTION_FEATURES[0]["vocab_size"]}
    vocab_sizes = {k: vocab_sizes[k] for k in changed_keys}
    backbone = _randomized(fusion="gate")
    assert_causal(backbone, INPUTS, vocab_sizes, atol=1e-5)
    # The all-position logits that the default training objective scores at every slot.
    model = NextItemModel(backbone)
    assert_causal(lambda inputs: model(inputs, all_positions=True), INPUTS, vocab_sizes, atol=1e-4)


@pytest.mark.parametrize("kwargs", [{}, {"fusion": "gate", "fused_attention": "decoupled", "untied_position": False}])
def test_padding_invariance(kwargs):
    assert_padding_invariant(_randomized(**kwargs), INPUTS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {
            "fusion": "gate",
            "gate_scorer": "mlp",
            "hie_basis": "soft",
            "share_hie_basis": True,
            "tie_output_table": False,
            "fused_attention": "decoupled",
            "num_layers": 3,
        },
        {"untied_position": False, "update_attribute_stream": False, "fusion": "concat"},
    ],
)
def test_gradients_reach_every_weight_through_the_training_loss(kwargs):
    backbone = _backbone(**NO_DROPOUT, **kwargs)
    model = _model(backbone)
    model(INPUTS)
    names = [w.path for w in model.trainable_variables]
    assert sum("side_information_embedding" in n for n in names) == 3
    assert sum("hie_basis" in n for n in names) == len(backbone.hie_bases) >= 1
    for path in ("fused_attention/value/", "fused_attention/attribute_value/"):
        assert any(path in n for n in names)
    if backbone.untied_position:
        assert any("fused_attention/position_value/" in n for n in names)

    def loss():
        y_pred = model(INPUTS, training=True)
        return model.compute_loss(x=INPUTS, y=LABELS, y_pred=y_pred, training=True)

    assert_gradients_reach_every_weight(model.trainable_variables, loss)
    # Zero attribute vectors (padding, items without attributes) are normalised in RSA: no NaN may come back.
    assert all(np.all(np.isfinite(g)) for g in gradients(model.trainable_variables, loss))


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_alignment_loss_matches_numpy(pooling):
    backbone = _randomized(pooling=pooling)
    outputs = backbone(INPUTS)
    cases = [
        {},
        {"rsa_reduction": "literal", "rsa_temperature": 0.5},
        {"rsa_scope": "batch"},
        {"rsa_scope": "batch", "rsa_exclude_repeats": False, "rsa_reduction": "literal"},
        {"rsa_exclude_repeats": False},
    ]
    for case in cases:
        # The loss options are the head's; one backbone serves every case.
        head = ASIFAlignmentHead(**{"rsa_weight": 0.3, **case})
        losses = head(outputs, INPUTS, LABELS, backbone=backbone)
        assert sorted(losses) == ["alignment"]
        expected = _np_alignment(backbone, head, ITEM_IDS)
        np.testing.assert_allclose(float(losses["alignment"]), 0.3 * expected, rtol=1e-4, err_msg=str(case))


def test_alignment_loss_of_a_single_item_sequence_is_zero():
    backbone = _randomized()
    item_ids = np.array([[0, 0, 0, 0, 0, 4]], dtype="int32")
    items = backbone.item_embedding(item_ids)
    attributes = backbone.side_information_embedding({"item_ids": item_ids, "rating": item_ids})["category"]
    head = ASIFAlignmentHead()
    np.testing.assert_allclose(float(head.alignment_loss(item_ids, items, attributes)), 0.0, atol=1e-6)


def test_alignment_loss_is_added_in_training_only():
    backbone = _randomized()
    model = _model(backbone)
    alignment = float(model.heads[0](backbone(INPUTS), INPUTS, LABELS, backbone=backbone)["alignment"])
    assert alignment > 0
    with_auxiliary = model.compute_loss(INPUTS, LABELS, model(INPUTS, training=True), training=True)
    without = model.compute_loss(INPUTS, LABELS, model(INPUTS, training=True), training=False)
    np.testing.assert_allclose(float(with_auxiliary) - float(without), alignment, rtol=1e-4)
    assert ASIFAlignmentHead(use_rsa=False)(backbone(INPUTS), INPUTS, LABELS, backbone=backbone) == {}


def test_layer_source_and_orthogonality_losses():
    backbone = _randomized(hie_basis="soft")
    head = ASIFAlignmentHead(rsa_source="layers", hie_orthogonality_weight=2.0)
    outputs = backbone(INPUTS)
    losses = head(outputs, INPUTS, LABELS, backbone=backbone)
    assert sorted(losses) == ["alignment", "orthogonality"]
    penalty = sum(
        np.sum((np.asarray(b.kernel).T.astype("float64") @ np.asarray(b.kernel) - np.eye(2)) ** 2)
        for b in backbone.hie_bases
    )
    np.testing.assert_allclose(float(losses["orthogonality"]), 2.0 * penalty, rtol=1e-4)
    # The mean over layers of the loss on each layer's input streams.
    expected = np.mean(
        [
            float(head.alignment_loss(ITEM_IDS, items, attributes))
            for items, attributes in zip(outputs["item_streams"], outputs["attribute_streams"])
        ]
    )
    np.testing.assert_allclose(float(losses["alignment"]), 0.1 * expected, rtol=1e-5)


def _variant(reference: ASIFBackbone, **kwargs) -> ASIFBackbone:
    backbone = _backbone(**NO_DROPOUT, **kwargs)
    backbone(INPUTS)
    shared = {w.path: w for w in reference.weights}
    rng = np.random.default_rng(2)
    for w in backbone.weights:
        if w.path in shared and tuple(shared[w.path].shape) == tuple(w.shape):
            w.assign(shared[w.path])
        else:
            w.assign(rng.normal(size=w.shape).astype("float32") * 0.5)
    return backbone


#: Flags that change the hidden states (ablations of Table 4, then the readings of docs/models.md#asif-readings).
OUTPUT_FLAGS = [
    {"use_hie": False},
    {"update_position_stream": False},
    {"fused_attention": "decoupled"},
    {"fused_attention": "item_only"},
    {"fused_attention": "vanilla"},
    {"untied_position": False},
    {"update_attribute_stream": False},
    {"hie_basis": "soft"},
    {"hie_basis": "fixed"},
    {"hie_activation": "relu"},
    {"hie_activation": "tanh"},
    {"hie_activation": "identity"},
    {"share_hie_basis": True},
    {"hie_rank": 4},
    {"side_stream_update": "residual"},
    {"side_stream_update": "replace"},
    {"fusion": "concat"},
    {"fusion": "gate"},
    {"score_scale": "double_head_dim"},
    {"pooling": "sum"},
    {"num_heads": 1},
]
#: Flags that change the auxiliary losses only.
LOSS_FLAGS = [
    {"use_rsa": False},
    {"rsa_weight": 0.5},
    {"rsa_temperature": 0.5},
    {"rsa_reduction": "literal"},
    {"rsa_scope": "batch"},
    {"rsa_source": "layers"},
    {"rsa_exclude_repeats": False},
]


def test_every_flag_changes_the_output_or_the_loss():
    # One reference for all variants (a backbone costs about a second to build and call eagerly).
    reference = _randomized()
    hidden = np.asarray(reference(INPUTS)["sequence_output"])
    losses = ASIFAlignmentHead()(reference(INPUTS), INPUTS, LABELS, backbone=reference)
    unchanged = []
    for kwargs in OUTPUT_FLAGS:
        if np.allclose(
            np.asarray(_variant(reference, **kwargs)(INPUTS)["sequence_output"])[REAL], hidden[REAL], atol=1e-4
        ):
            unchanged.append(kwargs)
    for kwargs in LOSS_FLAGS:
        # The loss flags are the head's: the same backbone outputs.
        variant = _variant(reference)
        np.testing.assert_allclose(np.asarray(variant(INPUTS)["sequence_output"]), hidden, atol=1e-6)
        actual = ASIFAlignmentHead(**kwargs)(variant(INPUTS), INPUTS, LABELS, backbone=variant)
        if actual.keys() == losses.keys() and np.isclose(float(actual["alignment"]), float(losses["alignment"])):
            unchanged.append(kwargs)
    assert unchanged == []


def test_output_table_flag_changes_the_scores():
    reference = _randomized()
    variant = _variant(reference, tie_output_table=False)
    assert variant.item_table() is variant.output_embedding.embeddings
    np.testing.assert_allclose(
        np.asarray(variant(INPUTS)["sequence_output"]), np.asarray(reference(INPUTS)["sequence_output"]), atol=1e-6
    )
    assert not np.allclose(NextItemModel(variant)(INPUTS), NextItemModel(reference)(INPUTS), atol=1e-4)


@pytest.mark.parametrize("kwargs", [{"fusion": "gate"}, {"hie_basis": "fixed", "share_hie_basis": True}])
def test_save_and_reload_keeps_predictions_and_tables(tmp_path, kwargs):
    backbone = _randomized(**kwargs)
    model = NextItemModel(backbone, heads=[ASIFAlignmentHead()])
    # The item tables are weights, never config.
    assert [key for key in backbone.get_config() if "table" in key] == ["tie_output_table"]
    restored = run_model_saving_test(model, INPUTS, tmp_path)
    assert isinstance(restored.backbone, ASIFBackbone)
    assert restored.backbone.get_config() == backbone.get_config()
    for before, after in zip(backbone.weights, restored.backbone.weights):
        assert before.path == after.path
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    assert_item_feature_tables(restored.backbone, _tables())


def test_config_with_the_old_score_scaling_key_loads():
    """Version 0.2.0 saved `score_scale` as `score_scaling`; such a config still builds the same backbone."""
    restored = assert_old_config_key_loads(_backbone(score_scale="double_head_dim"), "score_scaling", "score_scale")
    assert restored.score_scale == "double_head_dim"


def test_fit_with_an_interaction_feature():
    keras.utils.set_random_seed(0)
    backbone = _backbone(dropout=0.1, attention_dropout=0.1)
    model = NextItemModel(backbone, heads=[ASIFAlignmentHead()])
    inputs, labels = side_feature_batches()
    # Eager: tracing the step takes longer than the three epochs (the graph step is run by the CLI demo).
    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=[], run_eagerly=True)
    assert_fit_trains(model, inputs, labels, [basis.kernel for basis in backbone.hie_bases])


def test_missing_interaction_feature_is_named():
    with pytest.raises(ValueError, match="'rating'"):
        _backbone()({"item_ids": ITEM_IDS})


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"num_items": 2}, "num_items=2"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"fusion": "mean"}, "fusion='mean'"),
        ({"pooling": "median"}, "pooling='median'"),
        ({"fused_attention": "none"}, "fused_attention='none'"),
        ({"update_position_stream": 0}, "update_position_stream=0"),
        ({"hie_rank": 9}, "hie_rank=9"),
        ({"hie_rank": 0}, "hie_rank=0"),
        ({"hie_basis": "svd"}, "hie_basis='svd'"),
        ({"hie_activation": "gelu"}, "hie_activation='gelu'"),
        ({"side_stream_update": "gate"}, "side_stream_update='gate'"),
        ({"score_scale": "none"}, "score_scale='none'"),
        ({"tie_output_table": None}, "tie_output_table=None"),
        ({"item_features": [], "interaction_features": [], "fused_attention": "decoupled"}, "at least one"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        ASIFBackbone(**{**INIT_KWARGS, **kwargs})


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"use_rsa": "yes"}, "use_rsa='yes'"),
        ({"rsa_weight": -0.1}, "rsa_weight=-0.1"),
        ({"rsa_temperature": 0.0}, "rsa_temperature=0.0"),
        ({"rsa_reduction": "sum"}, "rsa_reduction='sum'"),
        ({"rsa_scope": "user"}, "rsa_scope='user'"),
        ({"rsa_source": "hidden"}, "rsa_source='hidden'"),
        ({"hie_orthogonality_weight": -1}, "hie_orthogonality_weight=-1"),
    ],
)
def test_invalid_head_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        ASIFAlignmentHead(**kwargs)


def test_head_config_round_trip():
    head = ASIFAlignmentHead(rsa_weight=0.3, rsa_scope="batch", rsa_source="layers", hie_orthogonality_weight=2.0)
    for key in ("rsa_weight", "rsa_scope", "rsa_source", "hie_orthogonality_weight"):
        assert key in head.get_config()
    run_serialization_test(head)
