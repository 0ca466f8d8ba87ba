import math

import keras
import numpy as np
import pytest
from helpers import (
    INTERACTION_FEATURES,
    ITEM_FEATURES,
    ITEM_IDS,
    NUM_ITEMS,
    RATINGS,
    REAL,
    SIDE_INIT_KWARGS,
    SIDE_INPUTS,
    assert_causal,
    assert_fit_trains,
    assert_gradients_reach_every_weight,
    assert_padding_invariant,
    item_feature_tables,
    np_attention_mask,
    np_dense,
    np_gelu,
    np_layer_norm,
    np_softmax,
    np_transformer_block,
    randomize_weights,
    run_backbone_test,
    run_model_saving_test,
    side_feature_batches,
)

from tfsidefuse.models import DIFSRBackbone, FDSABackbone, NextItemModel, NOVABackbone, SASRecFBackbone
from tfsidefuse.models.registry import BACKBONES
from tfsidefuse.models.sidefuse import SideFuseBackbone

INPUTS = SIDE_INPUTS
INIT_KWARGS = {**SIDE_INIT_KWARGS, "attribute_hidden_dim": 4, "late_num_layers": 1}
ENTRIES = ("embedding", "query_key", "attention_score", "late")
# One feature per entry point, the position in the scores, every fusion non-trivial.
MIXED = {"category": "embedding", "brand": "attention_score", "rating": "query_key", "position": "attention_score"}
MIXED_WITH_LATE = {"category": "late", "brand": "attention_score", "rating": "query_key", "position": "query_key"}
ASSIGNMENTS = {
    **{entry: {"default_entry": entry} for entry in ENTRIES},
    "mixed": {"entry_points": MIXED, "score_fusion": "gate", "fusion": "gate"},
    "mixed_with_late": {"entry_points": MIXED_WITH_LATE, "score_fusion": "concat", "query_key_fusion": "concat"},
}


def _backbone(**kwargs) -> SideFuseBackbone:
    keras.utils.set_random_seed(0)
    backbone = SideFuseBackbone(**{**INIT_KWARGS, "name": "sidefuse", **kwargs})
    backbone.set_item_feature_tables({f["name"]: item_feature_tables()[f["name"]] for f in backbone.item_features})
    backbone(INPUTS)
    return backbone


def _key(path: str) -> str:
    # A feature's table is the same role whichever width group embeds it.
    return path.replace("score_information_embedding", "side_information_embedding")


def _outputs_with_shared_weights(reference: SideFuseBackbone, **kwargs) -> np.ndarray:
    """Output of a backbone whose weights equal `reference`'s where their roles (paths) match, random elsewhere."""
    backbone = _backbone(**kwargs)
    randomize_weights(backbone.trainable_weights, seed=5)
    shared = {_key(w.path): w for w in reference.weights}
    for w in backbone.weights:
        if _key(w.path) in shared and tuple(shared[_key(w.path)].shape) == tuple(w.shape):
            w.assign(shared[_key(w.path)])
    return np.asarray(backbone(INPUTS)["sequence_output"])


def test_backbone_behaviors(tmp_path):
    init_kwargs = {**INIT_KWARGS, "entry_points": MIXED, "score_fusion": "gate"}
    run_backbone_test(SideFuseBackbone, init_kwargs, INPUTS, tmp_path)
    assert BACKBONES["sidefuse"] is SideFuseBackbone


def test_defaults_and_entry_point_resolution():
    backbone = SideFuseBackbone(num_items=30)
    config = backbone.get_config()
    defaults = {
        "entry_points": {},
        "default_entry": "embedding",
        "preset": None,
        "hidden_dim": 64,
        "num_layers": 2,
        "num_heads": 2,
        "fusion": "add",
        "query_key_fusion": "gate",
        "score_fusion": "sum",
        "attribute_hidden_dim": None,
        "late_num_layers": None,
        "pooling": "sum",
        "gate_scorer": "linear",
    }
    assert {k: config[k] for k in defaults} == defaults
    backbone = SideFuseBackbone(**INIT_KWARGS, entry_points=MIXED)
    assert backbone.resolved_entry_points == MIXED
    assert [backbone.features_at(entry) for entry in ENTRIES] == [["category"], ["rating"], ["brand"], []]
    backbone = SideFuseBackbone(**INIT_KWARGS, default_entry="late", entry_points={"brand": "query_key"})
    assert backbone.resolved_entry_points == {
        "category": "late",
        "brand": "query_key",
        "rating": "late",
        "position": "embedding",
    }


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("sasrec_f", ("embedding", "embedding", "embedding", "embedding")),
        ("nova", ("query_key", "query_key", "query_key", "query_key")),
        ("difsr", ("attention_score", "attention_score", "attention_score", "attention_score")),
        ("fdsa", ("late", "late", "late", "embedding")),
        ("comif", ("embedding", "embedding", "attention_score", "attention_score")),
    ],
)
def test_presets_expand_and_explicit_entries_override(preset, expected):
    names = ("category", "brand", "rating", "position")
    backbone = SideFuseBackbone(**INIT_KWARGS, preset=preset, default_entry="query_key")
    assert backbone.resolved_entry_points == dict(zip(names, expected))
    override = {"brand": "late", "position": "query_key"}
    backbone = SideFuseBackbone(**INIT_KWARGS, preset=preset, entry_points=override)
    assert backbone.resolved_entry_points == {**dict(zip(names, expected)), **override}
    assert backbone.get_config()["entry_points"] == override


def _np_fusion(layer, features: list[np.ndarray]) -> np.ndarray:
    """`EmbeddingFusion` (linear gate scorer) from its weights."""
    if layer.mode == "add":
        return np.sum(features, axis=0)
    if layer.mode == "concat":
        return np_dense(layer.projection, np.concatenate(features, axis=-1))
    scores = np.stack([f @ np.asarray(layer.gate_dense.kernel)[:, 0] for f in features], axis=-1)
    gates = np_softmax(scores)
    return sum(gates[..., k : k + 1] * f for k, f in enumerate(features))


def _np_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    b, t, width = x.shape
    return x.reshape(b, t, num_heads, width // num_heads).transpose(0, 2, 1, 3)


def _np_side(backbone: SideFuseBackbone, name: str, item_ids: np.ndarray, ratings: np.ndarray) -> np.ndarray:
    for layer in (backbone.side_information_embedding, backbone.score_information_embedding):
        for feature, embedding in zip(layer.item_features, layer.item_feature_embeddings):
            if feature["name"] == name:
                ids = item_feature_tables()[name][item_ids]
                return (np.asarray(embedding.embeddings)[ids] * (ids != 0)[..., None]).sum(axis=-2)
        for feature, embedding in zip(layer.interaction_features, layer.interaction_feature_embeddings):
            if feature["name"] == name:
                return np.asarray(embedding.embeddings)[ratings] * (ratings != 0)[..., None]
    raise KeyError(name)


def _np_backbone(backbone: SideFuseBackbone, item_ids: np.ndarray, ratings: np.ndarray) -> np.ndarray:
    """Category at the embedding, brand in the scores (sum), rating late, position at the queries/keys."""
    category, brand, rating = (_np_side(backbone, n, item_ids, ratings) for n in ("category", "brand", "rating"))
    real = item_ids != 0
    position = np.asarray(backbone.position_embedding.embeddings)[np.clip(np.cumsum(real, axis=1) - 1, 0, None)]
    x = _np_fusion(backbone.embedding_fusion, [np.asarray(backbone.item_embedding.embeddings)[item_ids], category])
    x = np_layer_norm(backbone.embeddings_layer_norm, x)
    mask = np_attention_mask(item_ids, causal=True)
    h, d = 2, 8
    for block in backbone.transformer_layers:
        attention = block.self_attention.decoupled_attention
        fused = _np_fusion(block.self_attention.query_key_fusion_layer, [x, position])
        item_scores = _np_heads(np_dense(attention.query_dense, fused), h) @ _np_heads(
            np_dense(attention.key_dense, fused), h
        ).transpose(0, 1, 3, 2)
        brand_scores = _np_heads(np_dense(attention.attribute_query_denses[0], brand), h) @ _np_heads(
            np_dense(attention.attribute_key_denses[0], brand), h
        ).transpose(0, 1, 3, 2)
        scores = (item_scores + brand_scores) / math.sqrt(d // h) + (1.0 - mask[:, None]) * -10000.0
        context = np_softmax(scores) @ _np_heads(np_dense(attention.value_dense, x), h)
        attended = np_dense(attention.attention_output_dense, context.transpose(0, 2, 1, 3).reshape(x.shape))
        hidden = np_layer_norm(block.attention_layer_norm, x + attended)
        feedforward = np_dense(
            block.feedforward_output_dense, np_gelu(np_dense(block.feedforward_intermediate_dense, hidden))
        )
        x = np_layer_norm(block.feedforward_layer_norm, hidden + feedforward)
    # One late feature: concat fusion projects it, add and gate fusion leave it as it is.
    if backbone.fusion == "concat":
        rating = _np_fusion(backbone.feature_fusion_layer, [rating])
    else:
        assert backbone.feature_fusion_layer is None
    y = np_layer_norm(backbone.feature_layer_norm, rating + position)
    for block in backbone.feature_transformer_layers:
        y = np_transformer_block(block, y, mask)
    fused = np_dense(backbone.tower_fusion.projection, np.concatenate([x, y], axis=-1))
    return np_layer_norm(backbone.output_layer_norm, fused)


@pytest.mark.parametrize("fusion, query_key_fusion", [("gate", "concat"), ("concat", "gate")])
def test_mixed_assignment_matches_numpy_reference(fusion, query_key_fusion):
    entry_points = {"category": "embedding", "brand": "attention_score", "rating": "late", "position": "query_key"}
    backbone = _backbone(
        entry_points=entry_points,
        fusion=fusion,
        query_key_fusion=query_key_fusion,
        dropout=0.0,
        attention_dropout=0.0,
    )
    randomize_weights(backbone.trainable_weights)
    expected = _np_backbone(backbone, ITEM_IDS, RATINGS)
    np.testing.assert_allclose(np.asarray(backbone(INPUTS)["sequence_output"])[REAL], expected[REAL], atol=1e-4)


def _copy_by_role(source, target, renames: dict[str, str]) -> None:
    """Assigns every weight of `target` from the weight of `source` with the same path after `renames`."""
    weights = {w.path.split("/", 1)[1]: w for w in source.weights}
    for w in target.weights:
        path = w.path.split("/", 1)[1]
        for old, new in renames.items():
            path = path.replace(old, new)
        assert tuple(weights[path].shape) == tuple(w.shape), path
        w.assign(weights[path])


ATTENTION_ROLE = {"side_fused_attention/decoupled_attention/": "self_attention/"}


@pytest.mark.parametrize("preset", [None, "sasrec_f"])
def test_everything_at_the_embedding_equals_sasrec_f(preset):
    kwargs = {k: v for k, v in INIT_KWARGS.items() if k not in ("attribute_hidden_dim", "late_num_layers")}
    keras.utils.set_random_seed(1)
    reference = SASRecFBackbone(**kwargs, fusion="add")
    reference.set_item_feature_tables(item_feature_tables())
    reference(INPUTS)
    randomize_weights(reference.trainable_weights)
    backbone = _backbone(preset=preset, fusion="add")
    _copy_by_role(reference, backbone, ATTENTION_ROLE)
    np.testing.assert_allclose(
        np.asarray(backbone(INPUTS)["sequence_output"])[REAL],
        np.asarray(reference(INPUTS)["sequence_output"])[REAL],
        atol=1e-5,
    )


def test_nova_preset_equals_nova():
    keras.utils.set_random_seed(1)
    kwargs = {k: v for k, v in INIT_KWARGS.items() if k not in ("attribute_hidden_dim", "late_num_layers")}
    reference = NOVABackbone(**kwargs, fusion="gate")
    reference.set_item_feature_tables(item_feature_tables())
    reference(INPUTS)
    randomize_weights(reference.trainable_weights)
    backbone = _backbone(preset="nova", query_key_fusion="gate")
    renames = {
        "side_fused_attention/decoupled_attention/": "non_invasive_attention/self_attention/",
        "side_fused_attention/query_key_fusion/": "non_invasive_attention/embedding_fusion/",
    }
    _copy_by_role(reference, backbone, renames)
    np.testing.assert_allclose(
        np.asarray(backbone(INPUTS)["sequence_output"])[REAL],
        np.asarray(reference(INPUTS)["sequence_output"])[REAL],
        atol=1e-5,
    )


@pytest.mark.parametrize("score_fusion", ["gate"])
def test_difsr_preset_equals_difsr(score_fusion):
    keras.utils.set_random_seed(1)
    kwargs = {k: v for k, v in INIT_KWARGS.items() if k != "late_num_layers"}
    reference = DIFSRBackbone(**kwargs, fusion=score_fusion)
    reference.set_item_feature_tables(item_feature_tables())
    reference(INPUTS)
    randomize_weights(reference.trainable_weights)
    backbone = _backbone(preset="difsr", score_fusion=score_fusion)
    renames = {"side_fused_attention/": "", "score_information_embedding": "side_information_embedding"}
    _copy_by_role(reference, backbone, renames)
    np.testing.assert_allclose(
        np.asarray(backbone(INPUTS)["sequence_output"])[REAL],
        np.asarray(reference(INPUTS)["sequence_output"])[REAL],
        atol=1e-5,
    )


def test_fdsa_preset_equals_fdsa_with_own_layer_norms():
    keras.utils.set_random_seed(1)
    kwargs = {k: v for k, v in INIT_KWARGS.items() if k not in ("attribute_hidden_dim", "late_num_layers")}
    reference = FDSABackbone(
        **kwargs, pooling="sum", feature_fusion="gate", gate_scorer="linear", share_layer_norm=False
    )
    reference.set_item_feature_tables(item_feature_tables())
    reference(INPUTS)
    randomize_weights(reference.trainable_weights)
    backbone = _backbone(preset="fdsa", fusion="gate", late_num_layers=2)
    # The feature tower is the same code with the same weight names; only the item tower's attention differs.
    _copy_by_role(reference, backbone, ATTENTION_ROLE)
    np.testing.assert_allclose(
        np.asarray(backbone(INPUTS)["sequence_output"])[REAL],
        np.asarray(reference(INPUTS)["sequence_output"])[REAL],
        atol=1e-5,
    )


def test_every_entry_point_changes_the_output():
    reference = _backbone(entry_points={"position": "attention_score"}, default_entry="late")
    randomize_weights(reference.trainable_weights, seed=3)
    # The brand through every entry point, then the position; the other features stay at the embedding.
    assignments = [{"brand": entry} for entry in ENTRIES]
    assignments += [{"brand": "embedding", "position": entry} for entry in ("query_key", "attention_score")]
    results = [_outputs_with_shared_weights(reference, entry_points=entry_points) for entry_points in assignments]
    for i, a in enumerate(results):
        for j in range(i + 1, len(results)):
            assert not np.allclose(a[REAL], results[j][REAL], atol=1e-4), (assignments[i], assignments[j])
    # Removing the brand changes the output, whichever entry point it had.
    without = _outputs_with_shared_weights(reference, item_features=ITEM_FEATURES[:1])
    for entry_points, result in zip(assignments[: len(ENTRIES)], results):
        assert not np.allclose(result[REAL], without[REAL], atol=1e-4), entry_points


@pytest.mark.parametrize("name", list(ASSIGNMENTS))
def test_causality_padding_and_gradients(name):
    kwargs = ASSIGNMENTS[name]
    backbone = _backbone(**kwargs)
    # Weights large enough that a side feature's effect on the scores shows in float32.
    randomize_weights(backbone.trainable_weights)
    vocab_sizes = {"item_ids": NUM_ITEMS, "rating": INTERACTION_FEATURES[0]["vocab_size"]}
    assert_causal(backbone, INPUTS, vocab_sizes)
    assert_causal(backbone, INPUTS, {"rating": vocab_sizes["rating"]})
    assert_padding_invariant(backbone, INPUTS)

    backbone = _backbone(**kwargs, dropout=0.0, attention_dropout=0.0)
    names = [w.path for w in backbone.trainable_variables]
    assert sum("_embedding/embeddings" in n and "information_embedding" in n for n in names) == 3
    projection = np.random.default_rng(0).normal(size=(8,)).astype("float32")
    assert_gradients_reach_every_weight(
        backbone.trainable_variables,
        lambda: keras.ops.sum(keras.ops.tanh(backbone(INPUTS, training=True)["sequence_output"]) * projection),
    )


def test_save_and_reload_keeps_predictions_and_tables(tmp_path):
    backbone = _backbone(entry_points=MIXED_WITH_LATE, dropout=0.0, attention_dropout=0.0)
    model = NextItemModel(backbone)
    restored = run_model_saving_test(model, INPUTS, tmp_path)
    assert isinstance(restored.backbone, SideFuseBackbone)
    assert restored.backbone.get_config() == backbone.get_config()
    lookups = list(restored.backbone.side_information_embedding.item_feature_lookups)
    lookups += list(restored.backbone.score_information_embedding.item_feature_lookups)
    assert len(lookups) == 2
    for lookup in lookups:
        np.testing.assert_array_equal(lookup.table, item_feature_tables()[lookup.name.removesuffix("_lookup")])
    np.testing.assert_allclose(
        restored.predict(INPUTS, verbose=0), model.predict(INPUTS, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_fit_decreases_the_loss():
    backbone = _backbone(entry_points=MIXED, dropout=0.1, attention_dropout=0.1)
    model = NextItemModel(backbone)
    inputs, labels = side_feature_batches()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=[], jit_compile=False)
    assert_fit_trains(model, inputs, labels, batch_size=8)


def test_set_item_feature_tables_validates():
    backbone = SideFuseBackbone(**INIT_KWARGS, entry_points=MIXED)
    with pytest.raises(ValueError, match=r"lacks the item feature\(s\) \['brand'\]"):
        backbone.set_item_feature_tables({"category": item_feature_tables()["category"]})
    with pytest.raises(ValueError, match=r"unknown item feature\(s\) \['colour'\]"):
        backbone.set_item_feature_tables({**item_feature_tables(), "colour": item_feature_tables()["brand"]})


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"entry_points": {"colour": "late"}}, "'colour'.*'late'"),
        ({"entry_points": {"brand": "middle"}}, "brand.*'middle'"),
        ({"entry_points": {"position": "late"}}, "position.*'late'"),
        ({"entry_points": ["brand"]}, r"\['brand'\]"),
        ({"default_entry": "value"}, "default_entry='value'"),
        ({"preset": "bert4rec"}, "preset='bert4rec'"),
        ({"fusion": "mean"}, "fusion='mean'"),
        ({"query_key_fusion": "sum"}, "query_key_fusion='sum'"),
        ({"score_fusion": "add"}, "score_fusion='add'"),
        ({"gate_scorer": "deep"}, "gate_scorer='deep'"),
        ({"pooling": "median"}, "pooling='median'"),
        ({"attribute_hidden_dim": 1}, "attribute_hidden_dim=1"),
        ({"late_num_layers": 0}, "late_num_layers=0"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"interaction_features": [{"name": "position", "vocab_size": 3}]}, "'position'"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        SideFuseBackbone(**{**INIT_KWARGS, **kwargs})


def test_configs_saved_before_the_shared_feature_tower():
    late = _backbone(preset="fdsa")
    config = late.get_config()
    assert config["weights_layout"] == 2
    assert SideFuseBackbone.from_config(config).get_config() == config
    # A 0.2.0 config (no weights layout): with late features its tower's weights had other names.
    old = {k: v for k, v in config.items() if k != "weights_layout"}
    with pytest.raises(ValueError, match=r"0\.2\.0 or earlier with late features \['category', 'brand', 'rating'\]"):
        SideFuseBackbone.from_config(old)
    # Without late features nothing was renamed: it still loads.
    early = _backbone(preset="difsr").get_config()
    early.pop("weights_layout")
    assert SideFuseBackbone.from_config(early).features_at("late") == []
