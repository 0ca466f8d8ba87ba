import keras
import numpy as np
import pytest
from helpers import (
    ITEM_IDS,
    REAL,
    assert_dropout_only_in_training,
    hidden_inputs,
    np_attention_mask,
    np_dense,
    np_gelu,
    np_layer_norm,
    np_self_attention,
    np_softmax,
    randomize_weights,
    run_model_saving_test,
    run_serialization_test,
)

from tfsidefuse.layers import NonInvasiveAttention, TransformerBlock

INIT_KWARGS = {"hidden_dim": 8, "num_heads": 2, "num_side_features": 2}
FUSIONS = [("add", "linear"), ("concat", "linear"), ("gate", "linear"), ("gate", "mlp")]


def _side(seeds=(1, 2)) -> list[np.ndarray]:
    return [hidden_inputs(seed=seed) for seed in seeds]


def np_fusion(fusion, features: list[np.ndarray]) -> np.ndarray:
    """docs/models.md#fusion-functions, from an `EmbeddingFusion`'s weights."""
    if fusion.mode == "add":
        return np.sum(features, axis=0)
    if fusion.mode == "concat":
        return np_dense(fusion.projection, np.concatenate(features, axis=-1))
    if fusion.gate_scorer == "linear":
        scores = [f @ np.asarray(fusion.gate_dense.kernel)[:, 0] for f in features]
    else:
        w = np.asarray(fusion.gate_output_dense.kernel)[:, 0]
        scores = [np.maximum(np_dense(fusion.gate_hidden_dense, f), 0.0) @ w for f in features]
    gates = np_softmax(np.stack(scores, axis=-1))
    return sum(gates[..., k : k + 1] * f for k, f in enumerate(features))


def np_non_invasive_attention(layer, items, side, mask):
    """`(output, probabilities)` of docs/models.md#nova steps 1-3: Q, K from `F(items, side)`, V from `items`."""
    fused = np_fusion(layer.embedding_fusion, [items] + list(side))
    return np_self_attention(layer.self_attention, fused, mask, fused, items)


def np_nova_block(block, items, side, mask):
    """docs/models.md#nova step 4: residual and FFN on the item stream only."""
    attended, _ = np_non_invasive_attention(block.self_attention, items, side, mask)
    hidden = np_layer_norm(block.attention_layer_norm, items + attended)
    feedforward = np_dense(
        block.feedforward_output_dense, np_gelu(np_dense(block.feedforward_intermediate_dense, hidden))
    )
    return np_layer_norm(block.feedforward_layer_norm, hidden + feedforward)


def _layer(**kwargs) -> NonInvasiveAttention:
    keras.utils.set_random_seed(0)
    layer = NonInvasiveAttention(**{**INIT_KWARGS, **kwargs})
    layer(hidden_inputs(), side_information=_side(), attention_mask=np_attention_mask(ITEM_IDS))
    randomize_weights(layer.weights)
    return layer


@pytest.mark.parametrize("fusion, gate_scorer", FUSIONS)
def test_layer_behaviors(fusion, gate_scorer, tmp_path):
    kwargs = {**INIT_KWARGS, "fusion": fusion, "gate_scorer": gate_scorer, "dropout": 0.1}
    layer = NonInvasiveAttention(**kwargs)
    run_serialization_test(layer)
    assert all(key in layer.get_config() for key in kwargs)
    mask = np_attention_mask(ITEM_IDS)
    outputs = layer(hidden_inputs(), side_information=_side(), attention_mask=mask)
    assert tuple(outputs.shape) == (2, 6, 8)
    # SelfAttention's 8 weights plus the fusion's.
    fusion_weights = {("add", "linear"): 0, ("concat", "linear"): 2, ("gate", "linear"): 1, ("gate", "mlp"): 3}
    assert len(layer.trainable_weights) == 8 + fusion_weights[(fusion, gate_scorer)]
    if fusion == "concat":
        assert tuple(layer.embedding_fusion.projection.kernel.shape) == (3 * 8, 8)

    # Symbolic call and save/reload of a small functional model.
    inputs = {name: keras.Input(shape=(None, 8), name=name) for name in ("items", "side_a", "side_b")}
    mask_input = keras.Input(shape=(None, None), dtype="bool", name="mask")
    symbolic = NonInvasiveAttention(**kwargs)(
        inputs["items"], side_information=[inputs["side_a"], inputs["side_b"]], attention_mask=mask_input
    )
    assert tuple(symbolic.shape) == (None, None, 8)
    model = keras.Model({**inputs, "mask": mask_input}, symbolic)
    side_a, side_b = _side()
    run_model_saving_test(model, {"items": hidden_inputs(), "side_a": side_a, "side_b": side_b, "mask": mask}, tmp_path)

    # Mixed precision: float32 variables, float16 outputs.
    mixed = NonInvasiveAttention(**kwargs, dtype="mixed_float16")
    mixed_outputs = mixed(hidden_inputs(), side_information=_side(), attention_mask=mask)
    assert keras.backend.standardize_dtype(mixed_outputs.dtype) == "float16"
    assert all(w.dtype == "float32" for w in mixed.weights)
    assert np.all(np.isfinite(np.asarray(mixed_outputs, dtype="float32")))


@pytest.mark.parametrize("fusion, gate_scorer", FUSIONS)
@pytest.mark.parametrize("causal", [True, False])
def test_matches_numpy_reference(fusion, gate_scorer, causal):
    layer = _layer(fusion=fusion, gate_scorer=gate_scorer)
    x, side = hidden_inputs(), _side()
    mask = np_attention_mask(ITEM_IDS, causal)
    outputs, probabilities = layer(x, side_information=side, attention_mask=mask, return_attention_scores=True)
    expected, expected_probabilities = np_non_invasive_attention(
        layer, x.astype("float64"), [s.astype("float64") for s in side], mask
    )
    np.testing.assert_allclose(np.asarray(outputs)[REAL], expected[REAL], atol=1e-4)
    probabilities = np.asarray(probabilities).transpose(0, 2, 1, 3)[REAL]
    np.testing.assert_allclose(probabilities, expected_probabilities.transpose(0, 2, 1, 3)[REAL], atol=1e-5)


def test_values_come_from_the_item_stream_only():
    layer = _layer(fusion="gate")
    mask = np_attention_mask(ITEM_IDS)
    # The same item-stream vector at every slot: every mixture of the values is that vector's projection,
    # whatever attention the side information induces.
    items = np.broadcast_to(hidden_inputs()[:, :1], (2, 6, 8)).copy()
    outputs, probabilities = layer(items, side_information=_side(), attention_mask=mask, return_attention_scores=True)
    other_outputs, other_probabilities = layer(
        items, side_information=_side(seeds=(5, 6)), attention_mask=mask, return_attention_scores=True
    )
    assert not np.allclose(np.asarray(probabilities)[:, :, -1], np.asarray(other_probabilities)[:, :, -1], atol=1e-3)
    np.testing.assert_allclose(np.asarray(outputs)[REAL], np.asarray(other_outputs)[REAL], atol=1e-5)
    # The side information shapes the queries and keys only: zeroing the value projection zeroes the output
    # (up to the output bias), while zeroing the query and key projections leaves the output untouched.
    x = hidden_inputs()
    outputs = np.asarray(layer(x, side_information=_side(), attention_mask=mask))
    attention = layer.self_attention
    for dense in (attention.query_dense, attention.key_dense):
        dense.kernel.assign(np.zeros(dense.kernel.shape, "float32"))
        dense.bias.assign(np.zeros(dense.bias.shape, "float32"))
    uniform = np.asarray(layer(x, side_information=_side(), attention_mask=mask))
    np.testing.assert_allclose(uniform, np.asarray(layer(x, side_information=_side(seeds=(5, 6)), attention_mask=mask)))
    assert not np.allclose(uniform[REAL], outputs[REAL], atol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_transformer_block_component_matches_numpy_reference(causal):
    keras.utils.set_random_seed(0)
    attention = NonInvasiveAttention(**INIT_KWARGS, fusion="concat")
    block = TransformerBlock(hidden_dim=8, num_heads=2, ff_dim=16, attention=attention)
    x, side = hidden_inputs(), _side()
    mask = np_attention_mask(ITEM_IDS, causal)
    block(x, attention_mask=mask, side_information=side)
    assert block.self_attention is attention
    assert len(block.trainable_weights) == 8 + 2 + 8  # attention, concat projection, two LNs and the FFN
    randomize_weights(block.weights)
    expected = np_nova_block(block, x.astype("float64"), [s.astype("float64") for s in side], mask)
    outputs = block(x, attention_mask=mask, side_information=side)
    np.testing.assert_allclose(np.asarray(outputs)[REAL], expected[REAL], atol=1e-4)
    run_serialization_test(block)
    revived = TransformerBlock.from_config(block.get_config())
    assert isinstance(revived.attention, NonInvasiveAttention)
    assert revived.attention.get_config() == attention.get_config()


def test_concat_fusion_of_side_features_of_other_widths():
    layer = NonInvasiveAttention(hidden_dim=8, num_heads=2, num_side_features=1, fusion="concat")
    side = [hidden_inputs(width=3, seed=1)]
    layer(hidden_inputs(), side_information=side)
    assert tuple(layer.embedding_fusion.projection.kernel.shape) == (8 + 3, 8)
    randomize_weights(layer.weights)
    expected, _ = np_non_invasive_attention(layer, hidden_inputs().astype("float64"), side, None)
    np.testing.assert_allclose(layer(hidden_inputs(), side_information=side), expected, atol=1e-4)


def test_without_side_information_add_fusion_is_self_attention():
    layer = NonInvasiveAttention(hidden_dim=8, num_heads=2, num_side_features=0)
    x, mask = hidden_inputs(), np_attention_mask(ITEM_IDS)
    layer(x, attention_mask=mask)
    randomize_weights(layer.weights)
    expected, _ = np_self_attention(layer.self_attention, x.astype("float64"), mask)
    np.testing.assert_allclose(np.asarray(layer(x, attention_mask=mask))[REAL], expected[REAL], atol=1e-5)


def test_dropout_only_in_training():
    layer = NonInvasiveAttention(**INIT_KWARGS, dropout=0.5)
    assert_dropout_only_in_training(
        layer, hidden_inputs(), side_information=_side(), attention_mask=np_attention_mask(ITEM_IDS)
    )


def test_wrong_number_of_side_tensors_raises():
    # Unbuilt: the shapes are checked; built: the tensors.
    with pytest.raises(ValueError, match=r"num_side_features=2\). Received: \[\(2, 6, 8\)\]"):
        NonInvasiveAttention(**INIT_KWARGS)(hidden_inputs(), side_information=_side()[:1])
    layer = _layer()
    with pytest.raises(ValueError, match="num_side_features=2 tensors. Received: 3"):
        layer(hidden_inputs(), side_information=_side() + _side()[:1])


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"hidden_dim": 0}, "hidden_dim=0"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"num_side_features": -1}, "num_side_features=-1"),
        ({"num_side_features": True}, "num_side_features=True"),
        ({"fusion": "mean"}, "fusion='mean'"),
        ({"gate_scorer": "deep"}, "gate_scorer='deep'"),
        ({"dropout": 1.5}, "dropout=1.5"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        NonInvasiveAttention(**{**INIT_KWARGS, **kwargs})
