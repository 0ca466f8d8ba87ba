import numpy as np
import pytest
from helpers import randomize_weights

from tfsidefuse.config import ConfigError, ModelConfig
from tfsidefuse.data.schema import DatasetSchema, FeatureSpec
from tfsidefuse.models import (
    ASIFAlignmentHead,
    COMIFAlignmentHead,
    DIFSRAttributeHead,
    NextItemModel,
    SASRecBackbone,
    SASRecFBackbone,
)
from tfsidefuse.models.difsr.difsr_attribute_head import attribute_log_odds
from tfsidefuse.models.registry import (
    BACKBONES,
    HEADS,
    build_backbone,
    build_model,
    side_feature_params,
    split_task_params,
    used_features,
)

NUM_ITEMS = 12
SCHEMA = DatasetSchema(
    "tiny",
    features=[
        FeatureSpec("category", "item", "multi_categorical", max_values=2, vocab_size=6),
        FeatureSpec("rating", "interaction", "categorical", vocab_size=7),
        FeatureSpec("brand", "item", "categorical", vocab_size=4),
    ],
    num_items=NUM_ITEMS,
    max_len=6,
)
RNG = np.random.default_rng(0)
TABLES = {"category": RNG.integers(0, 6, size=(NUM_ITEMS, 2)), "brand": RNG.integers(0, 4, size=(NUM_ITEMS, 1))}
for _table in TABLES.values():
    _table[0] = 0
PARAMS = {"hidden_dim": 8, "num_heads": 2, "ff_dim": 16, "num_layers": 1}
INPUTS = {"item_ids": np.array([[0, 3, 5, 7]], dtype="int32"), "rating": np.array([[0, 2, 6, 3]], dtype="int32")}


def _lookup_tables(backbone: SASRecFBackbone) -> dict[str, np.ndarray]:
    side = backbone.side_information_embedding
    return {f["name"]: np.asarray(lookup.table) for f, lookup in zip(side.item_features, side.item_feature_lookups)}


def test_registered_backbones():
    assert BACKBONES["sasrec"] is SASRecBackbone
    assert BACKBONES["sasrec_f"] is SASRecFBackbone
    assert side_feature_params(SASRecBackbone) == ()
    assert side_feature_params(SASRecFBackbone) == ("item_features", "interaction_features")


def test_used_features_names_what_a_config_reads():
    assert used_features("sasrec", PARAMS, SCHEMA) == []
    assert used_features("sasrec_f", PARAMS, SCHEMA) == ["category", "brand", "rating"]
    assert used_features("sasrec_f", {**PARAMS, "features": ["rating"]}, SCHEMA) == ["rating"]
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        used_features("nope", PARAMS, SCHEMA)


def test_builds_sasrec_f_with_every_schema_feature():
    backbone = build_backbone("sasrec_f", PARAMS, schema=SCHEMA, item_feature_tables=TABLES)
    assert (backbone.num_items, backbone.max_len, backbone.hidden_dim) == (NUM_ITEMS, 6, 8)
    assert backbone.item_features == [
        {"name": "category", "vocab_size": 6, "max_values": 2},
        {"name": "brand", "vocab_size": 4, "max_values": 1},
    ]
    assert backbone.interaction_features == [{"name": "rating", "vocab_size": 7}]
    tables = _lookup_tables(backbone)
    assert sorted(tables) == ["brand", "category"]
    for name, table in tables.items():
        np.testing.assert_array_equal(table, TABLES[name])
    assert tuple(backbone(INPUTS)["sequence_output"].shape) == (1, 4, 8)


def test_features_param_selects_features():
    params = {**PARAMS, "features": ["rating", "category"], "fusion": "gate"}
    model = build_model("sasrec_f", params, schema=SCHEMA, item_feature_tables=TABLES, objective="prefix")
    assert params["features"] == ["rating", "category"]  # the caller's params are left alone
    assert isinstance(model, NextItemModel) and model.objective == "prefix"
    backbone = model.backbone
    assert [f["name"] for f in backbone.item_features] == ["category"]
    assert [f["name"] for f in backbone.interaction_features] == ["rating"]
    assert backbone.fusion == "gate"
    np.testing.assert_array_equal(_lookup_tables(backbone)["category"], TABLES["category"])
    assert tuple(model(INPUTS).shape) == (1, NUM_ITEMS)

    only_items = build_backbone(
        "sasrec_f", {**PARAMS, "features": ["brand"]}, schema=SCHEMA, item_feature_tables=TABLES
    )
    assert only_items.interaction_features == []
    assert tuple(only_items({"item_ids": INPUTS["item_ids"]})["sequence_output"].shape) == (1, 4, 8)

    none = build_backbone("sasrec_f", {**PARAMS, "features": []}, schema=SCHEMA, item_feature_tables=TABLES)
    assert none.item_features == none.interaction_features == []


def test_unknown_feature_lists_available_ones():
    with pytest.raises(ValueError, match=r"unknown feature\(s\) \['colour'\].*\['category', 'rating', 'brand'\]"):
        build_backbone("sasrec_f", {**PARAMS, "features": ["colour"]}, schema=SCHEMA, item_feature_tables=TABLES)


def test_rejects_side_features_where_they_do_not_belong():
    with pytest.raises(ValueError, match="reads no side features"):
        build_backbone("sasrec", {**PARAMS, "features": ["category"]}, schema=SCHEMA)
    with pytest.raises(ValueError, match="derived from the dataset schema"):
        build_backbone("sasrec_f", {**PARAMS, "item_features": []}, schema=SCHEMA)
    with pytest.raises(ValueError, match=r"no item-feature table for \['brand'\]"):
        build_backbone("sasrec_f", PARAMS, schema=SCHEMA, item_feature_tables={"category": TABLES["category"]})
    with pytest.raises(ValueError, match="unknown model 'gru4rec'"):
        build_backbone("gru4rec", PARAMS, schema=SCHEMA)


def test_tables_may_come_later_with_the_weights():
    backbone = build_backbone("sasrec_f", PARAMS, schema=SCHEMA)
    backbone(INPUTS)
    assert all(np.all(table == 0) for table in _lookup_tables(backbone).values())


def test_sasrec_is_unchanged():
    model = build_model("sasrec", PARAMS, schema=SCHEMA, item_feature_tables=TABLES)
    assert type(model.backbone) is SASRecBackbone
    assert tuple(model(INPUTS).shape) == (1, NUM_ITEMS)


def test_config_validation_accepts_features_for_side_feature_models():
    config = ModelConfig("sasrec_f", {"features": ["category"], "dropout": "1e-1", "fusion": "gate"})
    config.validate()
    assert config.params == {"features": ["category"], "dropout": pytest.approx(0.1), "fusion": "gate"}
    ModelConfig("sasrec_f", {}).validate()


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("sasrec", {"features": ["category"]}, r"unknown key\(s\) \['features'\]"),
        ("sasrec_f", {"item_features": []}, r"unknown key\(s\) \['item_features'\]"),
        ("sasrec_f", {"features": "category"}, "model.features: expected a list of feature names"),
        ("sasrec_f", {"fusion": 3}, "model.fusion: expected str"),
    ],
)
def test_config_validation_rejects(name, params, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(name, params).validate()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_from_a_schema_with_unique_weight_paths(name):
    # Two layers: a layer built outside its block's scope would repeat its weight paths.
    backbone = build_backbone(name, {**PARAMS, "num_layers": 2}, schema=SCHEMA, item_feature_tables=TABLES)
    hidden = backbone(INPUTS)["sequence_output"]
    assert tuple(hidden.shape) == (1, 4, 8)
    paths = [w.path for w in backbone.weights]
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    assert not repeated, f"{name}: repeated weight paths {repeated}"


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_numbers_positions_from_the_newest_item_on_request(name):
    config = ModelConfig(name, {**PARAMS, "position_order": "newest_first"})
    config.validate()
    backbone = build_backbone(name, config.params, schema=SCHEMA, item_feature_tables=TABLES)
    oldest = build_backbone(name, PARAMS, schema=SCHEMA, item_feature_tables=TABLES)
    oldest(INPUTS)
    backbone(INPUTS)
    assert backbone.position_embedding.order == "newest_first"
    assert type(backbone).from_config(backbone.get_config()).position_order == "newest_first"
    # Weights far from their N(0, 0.02) start, where position terms that enter through products are tiny.
    randomize_weights(oldest.trainable_weights)
    backbone.set_weights(oldest.get_weights())
    # The same weights, only the numbering differs: the window of 3 real items uses position rows 0..2 one way
    # and 2..0 the other.
    assert not np.allclose(backbone(INPUTS)["sequence_output"], oldest(INPUTS)["sequence_output"], atol=1e-4)
    if backbone.causal:
        # Changing the latest item leaves the earlier real slots (1 and 2; slot 0 is padding) as they were.
        changed = {**INPUTS, "item_ids": INPUTS["item_ids"].copy()}
        changed["item_ids"][0, -1] = 9
        np.testing.assert_allclose(
            backbone(changed)["sequence_output"][:, 1:-1], backbone(INPUTS)["sequence_output"][:, 1:-1], atol=1e-5
        )


def test_position_order_is_checked_for_every_model():
    with pytest.raises(ConfigError, match="model.position_order must be one of .* got 'last'"):
        ModelConfig("difsr", {"position_order": "last"}).validate()


def test_heads_of_the_papers_take_their_params_from_the_model_params():
    assert HEADS == {"difsr": DIFSRAttributeHead, "asif": ASIFAlignmentHead, "comif": COMIFAlignmentHead}
    params = {**PARAMS, "lambda_attr": 3.0, "attribute_predictor_bias": "prior", "fusion": "sum"}
    assert split_task_params("difsr", params) == (
        {**PARAMS, "fusion": "sum"},
        {"lambda_attr": 3.0, "attribute_predictor_bias": "prior"},
    )
    model = build_model("difsr", params, schema=SCHEMA, item_feature_tables=TABLES)
    [head] = model.heads
    assert isinstance(head, DIFSRAttributeHead) and head.lambda_attr == 3.0
    assert [f["name"] for f in head.item_features] == ["category", "brand"] and head.hidden_dim == 8
    assert model.backbone.fusion == "sum" and "lambda_attr" not in model.backbone.get_config()
    # The prior biases come from the dataset's tables.
    np.testing.assert_allclose(head.attribute_predictors[0].bias, attribute_log_odds(TABLES["category"], 6))
    assert build_model("sasrec", PARAMS, schema=SCHEMA).heads == []
    asif = build_model(
        "asif", {**PARAMS, "rsa_weight": 0.5, "use_hie": False}, schema=SCHEMA, item_feature_tables=TABLES
    )
    assert asif.heads[0].rsa_weight == 0.5 and asif.backbone.use_hie is False
    comif = build_model("comif", {**PARAMS, "upa_num_negatives": 2}, schema=SCHEMA, item_feature_tables=TABLES)
    assert comif.heads[0].upa_num_negatives == 2


@pytest.mark.parametrize(
    "name, params, bad",
    [
        ("difsr", {"lambda_attr": "10"}, "lambda_attr"),
        ("asif", {"rsa_scope": 3}, "rsa_scope"),
        ("comif", {"upa_negatives": "shuffle"}, "upa_negatives"),
    ],
)
def test_head_params_are_validated(name, params, bad):
    with pytest.raises((ConfigError, ValueError), match=bad):
        ModelConfig(name, {**PARAMS, **params}).validate()
        build_model(name, {**PARAMS, **params}, schema=SCHEMA, item_feature_tables=TABLES)
