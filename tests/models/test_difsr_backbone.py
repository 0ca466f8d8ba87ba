import keras
import numpy as np
import pytest
from decoupled_attention_reference import np_decoupled_attention
from helpers import (
    ITEM_FEATURES,
    ITEM_IDS,
    NUM_ITEMS,
    assert_causal,
    assert_fit_trains,
    assert_gradients_reach_every_weight,
    assert_item_feature_tables,
    assert_padding_invariant,
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

from tfsidefuse.layers import DecoupledAttention
from tfsidefuse.models import DIFSRAttributeHead, DIFSRBackbone, NextItemModel
from tfsidefuse.models.difsr.difsr_attribute_head import attribute_log_odds

INTERACTION_FEATURES = [{"name": "action", "vocab_size": 6}]
INIT_KWARGS = {
    "num_items": NUM_ITEMS,
    "max_len": 8,
    "item_features": ITEM_FEATURES,
    "interaction_features": INTERACTION_FEATURES,
    "hidden_dim": 8,
    "attribute_hidden_dim": 4,
    "num_layers": 2,
    "num_heads": 2,
    "ff_dim": 16,
    "fusion": "gate",
}
#: The attribute predictors' arguments (`DIFSRAttributeHead`); the others are the backbone's.
HEAD_KWARGS = {"lambda_attr": 2.0}
ACTIONS = np.array([[0, 0, 2, 5, 3, 4], [4, 3, 2, 5, 5, 1]], dtype="int32")
INPUTS = {"item_ids": ITEM_IDS, "action": ACTIONS}
# Next item at every slot; 0 where there is no target.
LABELS = np.array([[0, 0, 7, 9, 3, 12], [4, 5, 6, 2, 8, 13]], dtype="int32")
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0}


def _backbone(**kwargs) -> DIFSRBackbone:
    keras.utils.set_random_seed(0)
    backbone = DIFSRBackbone(**{**INIT_KWARGS, "name": "difsr", **kwargs})
    backbone.set_item_feature_tables(item_feature_tables())
    return backbone


def _np_side_embeddings(backbone: DIFSRBackbone, item_ids: np.ndarray, actions: np.ndarray) -> list[np.ndarray]:
    side = backbone.side_information_embedding
    tables = item_feature_tables()
    outputs = []
    for feature, embedding in zip(ITEM_FEATURES, side.item_feature_embeddings):
        attribute_ids = tables[feature["name"]][item_ids]  # [batch, seq_len, m]
        vectors = np.asarray(embedding.embeddings)[attribute_ids] * (attribute_ids != 0)[..., None]
        outputs.append(vectors.sum(axis=-2) if backbone.pooling == "sum" else vectors.max(axis=-2))
    action_vectors = np.asarray(side.interaction_feature_embeddings[0].embeddings)[actions]
    outputs.append(action_vectors * (actions != 0)[..., None])
    return outputs


def _np_backbone(backbone: DIFSRBackbone, item_ids: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """docs/models.md#difsr at inference, from the backbone's weights (sum pooling)."""
    attributes = _np_side_embeddings(backbone, item_ids, actions)
    real = item_ids != 0
    positions = np.asarray(backbone.position_embedding.embeddings)[np.clip(np.cumsum(real, axis=1) - 1, 0, None)]
    # No position in the item stream: it acts through its own score map only.
    x = np_layer_norm(backbone.embeddings_layer_norm, np.asarray(backbone.item_embedding.embeddings)[item_ids])
    mask = np_attention_mask(item_ids, causal=True)
    for block in backbone.transformer_layers:
        attended, _ = np_decoupled_attention(block.self_attention, x, attributes, positions, mask)
        hidden = np_layer_norm(block.attention_layer_norm, x + attended)
        feedforward = np_dense(
            block.feedforward_output_dense, np_gelu(np_dense(block.feedforward_intermediate_dense, hidden))
        )
        x = np_layer_norm(block.feedforward_layer_norm, hidden + feedforward)
    return x


def _head(backbone: DIFSRBackbone, **kwargs) -> DIFSRAttributeHead:
    head = DIFSRAttributeHead(backbone.item_features, backbone.hidden_dim, **{**HEAD_KWARGS, **kwargs})
    head.set_item_feature_tables(item_feature_tables())
    return head


def _np_attribute_loss(head: DIFSRAttributeHead, hidden: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """docs/models.md#difsr, attribute predictors: multi-hot BCE over the non-pad classes, mean over target slots."""
    losses = {}
    for feature, predictor in zip(ITEM_FEATURES, head.attribute_predictors):
        logits = np_dense(predictor, hidden.astype("float64"))
        targets = np.zeros(logits.shape)
        for index in np.ndindex(labels.shape):
            for attribute in item_feature_tables()[feature["name"]][labels[index]]:
                targets[index + (attribute,)] = 1.0
        bce = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
        per_slot = bce[..., 1:].mean(axis=-1)
        losses[f"attribute_{feature['name']}"] = head.lambda_attr * per_slot[labels != 0].mean()
    return losses


def _model(**kwargs) -> NextItemModel:
    head_names = ("lambda_attr", "attribute_predictor_bias", "attribute_negatives", "seed")
    head_kwargs = {k: kwargs.pop(k) for k in head_names if k in kwargs}
    backbone = _backbone(**{**NO_DROPOUT, **kwargs})
    model = NextItemModel(backbone, heads=[_head(backbone, **head_kwargs)])
    model(INPUTS)
    return model


def test_backbone_behaviors(tmp_path):
    run_backbone_test(DIFSRBackbone, INIT_KWARGS, INPUTS, tmp_path)


def test_defaults_are_the_official_beauty_hyper_parameters():
    config = {**DIFSRBackbone(num_items=30).get_config(), **DIFSRAttributeHead().get_config()}
    defaults = {
        "max_len": 50,
        "item_features": [],
        "interaction_features": [],
        "hidden_dim": 256,
        "attribute_hidden_dim": 64,
        "num_layers": 4,
        "num_heads": 8,
        "ff_dim": 256,
        "dropout": 0.5,
        "attention_dropout": 0.3,
        "layer_norm_epsilon": 1e-12,
        "fusion": "gate",
        "pooling": "sum",
        "lambda_attr": 10.0,
        "attribute_predictor_bias": "zeros",
    }
    assert {k: config[k] for k in defaults} == defaults


def test_weights():
    backbone = _backbone()
    backbone(INPUTS)
    attention = backbone.transformer_layers[0].self_attention
    assert isinstance(attention, DecoupledAttention)
    assert attention.attribute_dims == [4, 4, 4]  # category, brand, action
    assert attention.fusion == "gate" and attention.max_len == 8
    assert len(backbone.non_trainable_weights) == 2  # the item -> attribute ids tables
    assert backbone.item_table() is backbone.item_embedding.embeddings
    assert [p.units for p in _head(backbone).attribute_predictors] == [7, 5]
    for w in backbone.side_information_embedding.trainable_weights:
        assert w.trainable  # the attribute tables train (the official code freezes them)
        assert w.shape[1] == 4


def _official_count(n_items, d, max_len, n_layers, d_attr, d_ff, vocab_sizes, fusion="gate", n_sources=None):
    """docs/models.md#difsr-parameter-count, generalised to several attributes and fusions (no attribute tables)."""
    p = len(vocab_sizes) if n_sources is None else n_sources
    fusion_count = {
        "sum": 0,
        "concat": max_len * (p + 2) * max_len + max_len,
        "gate": (max_len * max_len + max_len) + (max_len + 1),  # W_1, b_1; w_2, b_2
    }
    per_layer = (
        5 * (d * d + d)
        + p * 2 * (d_attr * d_attr + d_attr)
        + fusion_count[fusion]
        + (d * d + d)
        + 2 * d
        + (d * d_ff + d_ff)
        + (d_ff * d + d)
        + 2 * d
    )
    predictors = sum(d * v + v for v in vocab_sizes)
    return n_items * d + max_len * d + n_layers * per_layer + predictors + 2 * d


def test_parameter_count_matches_the_official_log():
    # Beauty (docs/models.md#difsr-parameter-count): 12102 item rows, 355 categories, the logged 5,355,783 trainable
    # parameters.
    assert _official_count(12102, 256, 50, 4, 64, 256, [355]) == 5_355_783
    beauty = DIFSRBackbone(num_items=12102, item_features=[{"name": "categories", "vocab_size": 355, "max_values": 5}])
    beauty.build()
    head = DIFSRAttributeHead(beauty.item_features, beauty.hidden_dim)
    head.build()
    attribute_table = 355 * 64  # trainable here, frozen (and so not logged) in the official code
    # RecBole's gate output bias cancels in the softmax over sources (and never gets a gradient): left out.
    gate_output_biases = 4
    count = beauty.count_params() + head.count_params()
    assert count - 12102 * 5 == 5_355_783 + attribute_table - gate_output_biases
    trainable_weights = beauty.trainable_weights + head.trainable_weights
    assert sum(int(np.prod(w.shape)) for w in trainable_weights) == count - 12102 * 5


@pytest.mark.parametrize("fusion", ["sum", "concat", "gate"])
def test_parameter_count_small_config(fusion):
    backbone = _backbone(fusion=fusion)
    # Interaction features are sources without predictor; tables: 7 + 5 + 6 rows of width 4.
    expected = _official_count(NUM_ITEMS, 8, 8, 2, 4, 16, [7, 5], fusion=fusion, n_sources=3)
    expected += (7 + 5 + 6) * 4 - (2 if fusion == "gate" else 0)
    trainable = sum(int(np.prod(w.shape)) for w in backbone.trainable_weights + _head(backbone).trainable_weights)
    assert trainable == expected


@pytest.mark.parametrize("fusion", ["sum", "concat", "gate"])
def test_matches_numpy_reference(fusion):
    backbone = _backbone(fusion=fusion)
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights)
    real = ITEM_IDS != 0
    expected = _np_backbone(backbone, ITEM_IDS, ACTIONS)
    np.testing.assert_allclose(np.asarray(backbone(INPUTS)["sequence_output"])[real], expected[real], atol=1e-4)


@pytest.mark.parametrize("fusion", ["sum", "concat", "gate"])
def test_causality(fusion):
    backbone = _backbone(fusion=fusion)
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights)
    # Item ids change the attributes looked up for them too; the action is an interaction feature.
    assert_causal(backbone, INPUTS, {"item_ids": NUM_ITEMS})
    assert_causal(backbone, INPUTS, {"action": INTERACTION_FEATURES[0]["vocab_size"]})


@pytest.mark.parametrize("fusion", ["concat", "gate"])
def test_padding_invariance(fusion):
    backbone = _backbone(fusion=fusion)
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights)
    # Three more padded slots make the window longer than max_len; the real items still fit.
    assert_padding_invariant(backbone, INPUTS, num_pad=3)


def test_gradients_reach_every_weight_through_the_training_loss():
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[])
    backbone = model.backbone
    names = [w.path for w in model.trainable_variables]
    assert sum("side_information_embedding" in n for n in names) == 3
    assert sum("predictor" in n for n in names) == 4
    assert sum("score_fusion" in n for n in names) == 2 * 3

    def training_loss():
        y_pred = model(INPUTS, training=True)
        return model.compute_loss(x=INPUTS, y=LABELS, y_pred=y_pred, training=True)

    assert_gradients_reach_every_weight(model.trainable_variables, training_loss)
    assert len(model.trainable_variables) == len(backbone.trainable_variables) + len(model.heads[0].trainable_variables)


def test_auxiliary_loss_matches_numpy():
    backbone = _backbone(**NO_DROPOUT)
    backbone(INPUTS)
    head = _head(backbone)
    randomize_weights(backbone.trainable_weights + head.trainable_weights)
    outputs = backbone(INPUTS)
    hidden = outputs["sequence_output"]
    # All-position labels: every slot with a target; last-position labels: the last slot.
    for labels, states in ((LABELS, np.asarray(hidden)), (LABELS[:, -1], np.asarray(hidden)[:, -1])):
        losses = head(outputs, INPUTS, labels, backbone=backbone)
        expected = _np_attribute_loss(head, states, labels)
        assert sorted(losses) == ["attribute_brand", "attribute_category"]
        for name, value in expected.items():
            np.testing.assert_allclose(float(losses[name]), value, rtol=1e-5)
    # Near ln 2 per class at initialisation (docs/models.md#difsr), times lambda.
    fresh = _backbone()
    losses = _head(fresh)(fresh(INPUTS), INPUTS, LABELS, backbone=fresh)
    np.testing.assert_allclose(float(losses["attribute_category"]), 2.0 * np.log(2.0), rtol=0.05)
    assert _head(backbone, lambda_attr=0.0)(outputs, INPUTS, LABELS, backbone=backbone) == {}
    no_items = DIFSRBackbone(**{**INIT_KWARGS, "item_features": []})
    assert DIFSRAttributeHead(no_items.item_features, 8)(outputs, INPUTS, LABELS, backbone=no_items) == {}


def _np_sampled_attribute_loss(head, hidden, labels, drawn):
    """The sampled estimate (docs/models.md#difsr) for given drawn ids per feature, in float64."""
    losses = {}
    for feature, predictor, ids in zip(ITEM_FEATURES, head.attribute_predictors, drawn):
        vocab_size = feature["vocab_size"]
        logits = np_dense(predictor, hidden.astype("float64"))
        per_slot = np.zeros(labels.shape)
        for index in np.ndindex(labels.shape):
            targets = {int(a) for a in item_feature_tables()[feature["name"]][labels[index]]} - {0}
            positive = sum(np.log1p(np.exp(-logits[index + (c,)])) for c in targets)
            negative = sum(np.log1p(np.exp(logits[index + (c,)])) for c in ids if int(c) not in targets)
            per_slot[index] = (positive + negative * (vocab_size - 1) / len(ids)) / (vocab_size - 1)
        losses[f"attribute_{feature['name']}"] = head.lambda_attr * per_slot[labels != 0].mean()
    return losses


def test_sampled_attribute_loss_matches_numpy_for_its_draws():
    backbone = _backbone(**NO_DROPOUT)
    outputs = backbone(INPUTS)
    head = _head(backbone, attribute_negatives=3, seed=11)
    randomize_weights(backbone.trainable_weights + head.trainable_weights)
    outputs = backbone(INPUTS)
    # The head draws 3 ids per feature, one feature after the other, from a generator seeded like its own.
    twin = keras.random.SeedGenerator(11)
    drawn = [
        np.asarray(keras.random.randint((3,), 1, f["vocab_size"], dtype="int32", seed=twin)) for f in ITEM_FEATURES
    ]
    losses = head(outputs, INPUTS, LABELS, backbone=backbone)
    expected = _np_sampled_attribute_loss(head, np.asarray(outputs["sequence_output"]), LABELS, drawn)
    for name, value in expected.items():
        np.testing.assert_allclose(float(losses[name]), value, rtol=1e-5)
    exact = _head(backbone)
    for a, b in zip(exact.attribute_predictors, head.attribute_predictors):
        a.set_weights(b.get_weights())
    exact_losses = exact(outputs, INPUTS, LABELS, backbone=backbone)
    assert any(abs(float(losses[k]) - float(exact_losses[k])) > 1e-4 for k in losses)  # an estimate, not exact
    # A vocabulary of at most K + 1 ids keeps the exact loss.
    wide = _head(backbone, attribute_negatives=6)
    for a, b in zip(wide.attribute_predictors, head.attribute_predictors):
        a.set_weights(b.get_weights())
    for name, value in wide(outputs, INPUTS, LABELS, backbone=backbone).items():
        np.testing.assert_allclose(float(value), float(exact_losses[name]), rtol=1e-6)


def test_sampled_attribute_loss_is_unbiased():
    """The mean of the estimate over many draws is the exact loss."""
    backbone = _backbone(**NO_DROPOUT)
    outputs = backbone(INPUTS)
    head = _head(backbone, attribute_negatives=2, seed=3)
    exact = _head(backbone)
    randomize_weights(backbone.trainable_weights + head.trainable_weights)
    for a, b in zip(exact.attribute_predictors, head.attribute_predictors):
        a.set_weights(b.get_weights())
    outputs = backbone(INPUTS)
    draws = [head(outputs, INPUTS, LABELS, backbone=backbone) for _ in range(600)]
    for name, value in exact(outputs, INPUTS, LABELS, backbone=backbone).items():
        estimates = np.array([float(d[name]) for d in draws])
        assert estimates.std() > 1e-3 * float(value)  # the draws do vary
        np.testing.assert_allclose(estimates.mean(), float(value), rtol=0.02)


def test_sampled_attribute_loss_trains_and_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = _backbone(num_layers=1, dropout=0.1, attention_dropout=0.1)
    head = _head(backbone, attribute_negatives=2, seed=1)
    model = NextItemModel(backbone, heads=[head])
    inputs, labels = side_feature_batches("action")
    model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=[])
    randomize_weights(backbone.trainable_weights + head.trainable_weights, scale=0.2)
    watched = backbone.side_information_embedding.trainable_weights + [p.kernel for p in head.attribute_predictors]
    before = [np.array(v) for v in watched]
    # The estimate is noisy (2 of 4 or 6 ids per batch), so its training loss need not fall over a few batches.
    history = model.fit(inputs, labels, batch_size=4, epochs=2, shuffle=False, verbose=0).history
    assert np.all(np.isfinite(history["loss"])), history
    for value, variable in zip(before, watched):
        assert np.any(value != np.array(variable)), variable.path
    path = str(tmp_path / "sampled.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.heads[0].attribute_negatives == 2
    np.testing.assert_allclose(
        np.asarray(reloaded.predict(inputs, verbose=0)), np.asarray(model.predict(inputs, verbose=0)), atol=1e-5
    )


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # no predictor gradient with lambda 0
def test_auxiliary_loss_is_added_in_training_only():
    plain = _model(lambda_attr=0.0)
    weighted = _model(lambda_attr=3.0)
    randomize_weights(plain.backbone.trainable_weights, scale=0.3)
    weighted.set_weights(plain.get_weights())
    for model in (plain, weighted):
        # Eager: the same code path as a traced step, without the tracing time.
        model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[], run_eagerly=True)
    losses = [m.train_on_batch(INPUTS, LABELS, return_dict=True)["loss"] for m in (plain, weighted)]
    expected = _np_attribute_loss(weighted.heads[0], np.asarray(weighted.backbone(INPUTS)["sequence_output"]), LABELS)
    np.testing.assert_allclose(losses[1], losses[0] + sum(expected.values()), rtol=1e-5)
    # Evaluation reports the next-item loss alone.
    evaluated = [m.test_on_batch(INPUTS, LABELS[:, -1], return_dict=True)["loss"] for m in (plain, weighted)]
    np.testing.assert_allclose(evaluated[1], evaluated[0], rtol=1e-6)


def test_each_flag_changes_the_output():
    reference = _backbone()
    reference(INPUTS)
    randomize_weights(reference.trainable_weights)
    shared = {w.path: np.asarray(w) for w in reference.weights}

    def outputs(**kwargs):
        backbone = _backbone(**kwargs)
        backbone(INPUTS)
        # Same weights wherever the shapes agree; random ones in the fusion layers.
        for w in backbone.weights:
            if w.path in shared and tuple(w.shape) == shared[w.path].shape and "score_fusion" not in w.path:
                w.assign(shared[w.path])
            elif "score_fusion" in w.path:
                w.assign(np.random.default_rng(2).normal(size=w.shape).astype("float32"))
        return np.asarray(backbone(INPUTS)["sequence_output"])

    results = {
        "gate": outputs(),
        "sum": outputs(fusion="sum"),
        "concat": outputs(fusion="concat"),
        "mean pooling": outputs(pooling="mean"),
        "max pooling": outputs(pooling="max"),
        "no interaction feature": outputs(interaction_features=[]),
    }
    keys = list(results)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not np.allclose(results[a], results[b], atol=1e-4), (a, b)
    # The attribute tables matter: other attributes for the same items change the output.
    changed = _backbone()
    changed(INPUTS)
    for w in changed.weights:
        w.assign(shared[w.path])
    changed.set_item_feature_tables({name: np.where(t > 0, t % 3 + 2, 0) for name, t in item_feature_tables().items()})
    assert not np.allclose(np.asarray(changed(INPUTS)["sequence_output"]), results["gate"], atol=1e-4)


def test_save_and_reload_keeps_predictions_and_tables(tmp_path):
    model = _model(fusion="concat")
    assert "table" not in str(model.backbone.get_config())
    restored = run_model_saving_test(model, INPUTS, tmp_path)
    assert isinstance(restored.backbone, DIFSRBackbone)
    assert restored.backbone.get_config() == model.backbone.get_config()
    assert_item_feature_tables(restored.backbone, item_feature_tables())
    assert restored.heads[0].get_config() == model.heads[0].get_config()
    for before, after in zip(model.heads[0].attribute_predictors, restored.heads[0].attribute_predictors):
        np.testing.assert_array_equal(after.kernel, before.kernel)


def test_fit_trains_attribute_tables_and_predictors():
    keras.utils.set_random_seed(0)
    # One layer and plain SGD keep the traced training step cheap.
    backbone = _backbone(num_layers=1, dropout=0.1, attention_dropout=0.1)
    head = _head(backbone)
    model = NextItemModel(backbone, heads=[head])
    inputs, labels = side_feature_batches("action")
    model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=[])
    # Larger than the N(0, 0.02) start, where the attribute score maps (products of four small factors) are
    # nearly flat and plain SGD moves their tables by less than float32 resolution.
    randomize_weights(backbone.trainable_weights + head.trainable_weights, scale=0.2)
    watched = backbone.side_information_embedding.trainable_weights + [p.kernel for p in head.attribute_predictors]
    assert_fit_trains(model, inputs, labels, watched, any_change=True)


def test_attribute_log_odds_by_hand():
    # Rows 0 and 1 (padding, OOV) are left out: 4 real items; a repeated id counts once per item.
    table = np.array([[0, 0], [0, 0], [2, 3], [2, 0], [3, 3], [4, 2]])
    # n_c = 0, 3, 2, 1, 0 for c = 1..5, q_c = (n_c + 1) / 6.
    expected = [0.0, np.log(1 / 5), np.log(2.0), 0.0, np.log(1 / 2), np.log(1 / 5)]
    np.testing.assert_allclose(attribute_log_odds(table, 6), expected, rtol=1e-6, atol=1e-7)


def test_prior_predictor_bias_starts_at_the_attribute_frequencies():
    zeros = _backbone(**NO_DROPOUT)
    zeros_head = _head(zeros)
    prior = _backbone(**NO_DROPOUT)
    prior_head = _head(prior, attribute_predictor_bias="prior")
    tables = item_feature_tables()
    for feature, predictor in zip(ITEM_FEATURES, prior_head.attribute_predictors):
        np.testing.assert_allclose(predictor.bias, attribute_log_odds(tables[feature["name"]], feature["vocab_size"]))
    for predictor in zeros_head.attribute_predictors:
        np.testing.assert_array_equal(predictor.bias, 0.0)
    # The same seed gives the same other weights: only the predictor biases differ, and the prior starts the
    # attribute losses lower than probability 0.5 for every attribute.
    zeros_loss = zeros_head(zeros(INPUTS), INPUTS, LABELS, backbone=zeros)
    prior_loss = prior_head(prior(INPUTS), INPUTS, LABELS, backbone=prior)
    for name in ("attribute_category", "attribute_brand"):
        assert float(prior_loss[name]) < float(zeros_loss[name])
    # With a zero kernel the predicted probabilities are the smoothed item frequencies.
    predictor = prior_head.attribute_predictors[1]
    predictor.kernel.assign(np.zeros(predictor.kernel.shape, "float32"))
    probabilities = keras.ops.sigmoid(predictor(np.ones((1, 8), "float32")))[0, 2:]
    brands = tables["brand"][2:, 0]
    np.testing.assert_allclose(probabilities, [(np.sum(brands == b) + 1) / (len(brands) + 2) for b in (2, 3, 4)])


def test_prior_predictor_bias_survives_save_and_reload(tmp_path):
    model = _model(attribute_predictor_bias="prior")
    trained = np.linspace(-3.0, 1.0, ITEM_FEATURES[0]["vocab_size"]).astype("float32")
    model.heads[0].attribute_predictors[0].bias.assign(trained)
    restored = run_model_saving_test(model, INPUTS, tmp_path)
    assert restored.heads[0].attribute_predictor_bias == "prior"
    np.testing.assert_array_equal(restored.heads[0].attribute_predictors[0].bias, trained)


def test_set_item_feature_tables_validates():
    backbone = DIFSRBackbone(**INIT_KWARGS)
    with pytest.raises(ValueError, match=r"lacks the item feature\(s\) \['brand'\]"):
        backbone.set_item_feature_tables({"category": item_feature_tables()["category"]})


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"num_items": 2}, "num_items=2"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"attribute_hidden_dim": 1}, "attribute_hidden_dim=1"),
        ({"attribute_hidden_dim": 4.0}, "attribute_hidden_dim=4.0"),
        ({"fusion": "add"}, "fusion='add'"),
        ({"pooling": "median"}, "pooling='median'"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"item_features": [{"name": "category", "vocab_size": 0, "max_values": 2}]}, "vocab_size=0"),
        ({"interaction_features": [{"name": "brand", "vocab_size": 3}]}, "duplicate"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        DIFSRBackbone(**{**INIT_KWARGS, **kwargs})


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"attribute_predictor_bias": "ones"}, "attribute_predictor_bias='ones'"),
        ({"lambda_attr": -1.0}, "lambda_attr=-1.0"),
        ({"lambda_attr": "10"}, "lambda_attr='10'"),
        ({"hidden_dim": 0}, "hidden_dim=0"),
        ({"item_features": [{"name": "category"}]}, "vocab_size"),
        ({"attribute_negatives": 0}, "attribute_negatives=0"),
        ({"attribute_negatives": 2.5}, "attribute_negatives=2.5"),
        ({"seed": "1"}, "seed='1'"),
    ],
)
def test_invalid_head_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        DIFSRAttributeHead(**{"item_features": ITEM_FEATURES, "hidden_dim": 8, **kwargs})


def test_head_config_round_trip():
    head = DIFSRAttributeHead(ITEM_FEATURES, 8, lambda_attr=2.0, attribute_predictor_bias="prior")
    for key in ("item_features", "hidden_dim", "lambda_attr", "attribute_predictor_bias"):
        assert key in head.get_config()
    run_serialization_test(head)
    sampling = DIFSRAttributeHead(ITEM_FEATURES, 8, attribute_negatives=4, seed=2)
    assert sampling.get_config()["attribute_negatives"] == 4 and sampling.get_config()["seed"] == 2
    run_serialization_test(sampling)


@pytest.mark.parametrize("fusion", ["sum", "gate"])
def test_last_position_only_equals_the_last_slot_and_drives_last_position_scoring(fusion):
    backbone = _backbone(fusion=fusion)
    backbone(INPUTS)
    randomize_weights(backbone.trainable_weights)
    full = np.asarray(backbone(INPUTS)["sequence_output"])
    last = np.asarray(backbone(INPUTS, last_position_only=True)["sequence_output"])
    assert last.shape == (2, 1, 8)
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-5)
    # The model's inference logits come from it: the full states' last slot against the item table.
    model = NextItemModel(backbone)
    logits = np.asarray(model(INPUTS, training=False))
    table = np.asarray(backbone.item_table())
    expected = full[:, -1] @ table.T
    np.testing.assert_allclose(logits[:, 2:], expected[:, 2:], rtol=1e-4, atol=1e-5)
    # Last-position training with the attribute losses: the loss of the full states' last slot.
    labels = LABELS[:, -1]
    model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[], run_eagerly=True)
    head = _head(backbone)
    backbone_loss = head({"sequence_output": full}, INPUTS, labels, backbone=backbone)
    next_item = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, expected)
    no_dropout = _backbone(fusion=fusion, **NO_DROPOUT)
    model_no_dropout = NextItemModel(no_dropout, objective="prefix", heads=[_head(no_dropout)])
    model_no_dropout.backbone(INPUTS)
    model_no_dropout.backbone.set_weights(backbone.get_weights())
    model_no_dropout.heads[0].set_weights(head.get_weights())
    model_no_dropout.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[], run_eagerly=True)
    loss = model_no_dropout.train_on_batch(INPUTS, labels, return_dict=True)["loss"]
    np.testing.assert_allclose(loss, float(next_item) + sum(float(v) for v in backbone_loss.values()), rtol=1e-5)
