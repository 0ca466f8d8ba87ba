import keras
import numpy as np
import pytest
from decoupled_attention_reference import np_decoupled_attention
from helpers import (
    ITEM_IDS,
    REAL,
    assert_dropout_only_in_training,
    assert_gradients_reach_every_weight,
    hidden_inputs,
    np_attention_mask,
    randomize_weights,
    run_layer_test,
    run_serialization_test,
)

from tfsidefuse.layers import DecoupledAttention, TransformerBlock

MAX_LEN = 7  # longer than the windows, so the fused key rows have unused trailing positions
ATTRIBUTE_DIMS = [4, 6]  # head widths 2 and 3 with two heads
ATTRIBUTES = [hidden_inputs(width=4, seed=1), hidden_inputs(width=6, seed=2)]
POSITIONS = hidden_inputs(seed=3)
ITEMS = hidden_inputs()


def _layer(fusion: str, attribute_dims=ATTRIBUTE_DIMS, **kwargs) -> DecoupledAttention:
    keras.utils.set_random_seed(0)
    return DecoupledAttention(
        hidden_dim=8, num_heads=2, attribute_dims=attribute_dims, fusion=fusion, max_len=MAX_LEN, **kwargs
    )


def _call(layer, items=ITEMS, attributes=ATTRIBUTES, positions=POSITIONS, mask=None, **kwargs):
    mask = np_attention_mask(ITEM_IDS) if mask is None else mask
    return layer(items, attention_mask=mask, attribute_inputs=attributes, position_inputs=positions, **kwargs)


@pytest.mark.parametrize(
    "fusion, attribute_dims, expected_weights",
    # 5 projections and the output (kernel, bias), 2 per attribute projection, fusion weights.
    [("gate", [4], 12 + 4 + 3), ("concat", [4], 12 + 4 + 2), ("sum", [], 12)],
)
def test_layer_behaviors(tmp_path, fusion, attribute_dims, expected_weights):
    input_data = {"inputs": ITEMS, "attention_mask": np_attention_mask(ITEM_IDS), "position_inputs": POSITIONS}
    if attribute_dims:
        input_data["attribute_inputs"] = ATTRIBUTES[0]  # a single attribute may be given as a tensor
    run_layer_test(
        DecoupledAttention,
        init_kwargs={
            "hidden_dim": 8,
            "num_heads": 2,
            "attribute_dims": attribute_dims,
            "fusion": fusion,
            "max_len": MAX_LEN,
            "dropout": 0.1,
        },
        input_data=input_data,
        expected_output_shape=(2, 6, 8),
        tmp_dir=tmp_path,
        expected_num_trainable_weights=expected_weights,
    )


def test_weight_shapes():
    layer = _layer("concat")
    _call(layer)
    assert tuple(layer.attribute_query_denses[0].kernel.shape) == (4, 4)
    assert tuple(layer.attribute_key_denses[1].kernel.shape) == (6, 6)
    assert tuple(layer.position_query_dense.kernel.shape) == (8, 8)
    # One key row of max_len per source: two attributes, item, position.
    assert tuple(layer.score_fusion.projection.kernel.shape) == (4 * MAX_LEN, MAX_LEN)
    gated = _layer("gate", attribute_dims=[5])  # floor(5 / 2) = 2 per head
    _call(gated, attributes=[hidden_inputs(width=5)])
    assert tuple(gated.attribute_query_denses[0].kernel.shape) == (5, 4)
    assert tuple(gated.score_fusion.gate_hidden_dense.kernel.shape) == (MAX_LEN, MAX_LEN)
    assert tuple(gated.score_fusion.gate_output_dense.kernel.shape) == (MAX_LEN, 1)


@pytest.mark.parametrize("fusion, causal", [("sum", True), ("concat", True), ("gate", True), ("concat", False)])
def test_matches_numpy_reference(fusion, causal):
    layer = _layer(fusion)
    mask = np_attention_mask(ITEM_IDS, causal=causal)
    _call(layer, mask=mask)
    randomize_weights(layer.weights)
    outputs, probabilities = _call(layer, mask=mask, return_attention_scores=True)
    expected, expected_probabilities = np_decoupled_attention(layer, ITEMS, ATTRIBUTES, POSITIONS, mask)
    np.testing.assert_allclose(np.asarray(outputs)[REAL], expected[REAL], atol=1e-4)
    probabilities = np.asarray(probabilities).transpose(0, 2, 1, 3)  # [batch, query, head, key]
    expected_probabilities = expected_probabilities.transpose(0, 2, 1, 3)
    np.testing.assert_allclose(probabilities[REAL], expected_probabilities[REAL], atol=1e-5)
    # Future and padded keys get exactly zero probability.
    allowed = np.broadcast_to(mask[:, :, None, :], probabilities.shape)
    assert np.all(probabilities[REAL][~allowed[REAL]] == 0.0)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-6)


def test_scores_are_scaled_by_the_item_head_width_only():
    # With a single attribute of head width 2 and item head width 4, sum fusion of scores built by hand.
    layer = DecoupledAttention(hidden_dim=8, num_heads=2, attribute_dims=[4], fusion="sum")
    mask = np_attention_mask(ITEM_IDS)
    _call(layer, attributes=[ATTRIBUTES[0]], mask=mask)
    randomize_weights(layer.weights)
    _, probabilities = _call(layer, attributes=[ATTRIBUTES[0]], mask=mask, return_attention_scores=True)
    _, expected = np_decoupled_attention(layer, ITEMS, [ATTRIBUTES[0]], POSITIONS, mask)
    np.testing.assert_allclose(np.asarray(probabilities)[:, :, -1], expected[:, :, -1], atol=1e-5)


def test_model_width_scaling_equals_scaling_every_query_by_sqrt_of_the_width_ratio():
    # Sum fusion is linear in the scores: dividing by sqrt(d) instead of sqrt(d_h) is scaling every query.
    by_model = _layer("sum", score_scale="hidden_dim")
    by_head = _layer("sum")
    for layer in (by_model, by_head):
        _call(layer)
    randomize_weights(by_model.weights)
    ratio = np.sqrt(by_head.head_dim / by_head.hidden_dim)
    for source, target in zip(by_model.weights, by_head.weights):
        target.assign(np.asarray(source) * (ratio if "query" in source.path else 1.0))
    scaled = [w.path for w in by_head.weights if "query" in w.path]
    assert len(scaled) == 2 * 4  # item, two attributes and position: kernel and bias each
    np.testing.assert_allclose(np.asarray(_call(by_model))[REAL], np.asarray(_call(by_head))[REAL], atol=1e-5)
    assert not np.allclose(np.asarray(_call(by_model))[REAL], np.asarray(_call(_copy(by_model)))[REAL], atol=1e-4)


def _copy(layer):
    """The same weights with the default (head width) scaling."""
    twin = _layer("sum")
    _call(twin)
    twin.set_weights(layer.get_weights())
    return twin


@pytest.mark.parametrize("fusion", ["sum", "concat", "gate"])
def test_causal_and_blind_to_padding(fusion):
    layer = _layer(fusion)
    _call(layer)
    randomize_weights(layer.weights)
    before = np.asarray(_call(layer))
    rng = np.random.default_rng(5)
    for slot in range(1, 6):
        # Every input changes from `slot` on: the outputs before it do not.
        items, positions = ITEMS.copy(), POSITIONS.copy()
        attributes = [a.copy() for a in ATTRIBUTES]
        for x in [items, positions, *attributes]:
            x[:, slot:] = rng.normal(size=x[:, slot:].shape)
        after = np.asarray(_call(layer, items, attributes, positions))
        np.testing.assert_allclose(after[:, :slot][REAL[:, :slot]], before[:, :slot][REAL[:, :slot]], atol=1e-6)
        assert not np.allclose(after[:, slot:], before[:, slot:])
    # Whatever sits in the padded slots never reaches a real slot.
    items, positions = ITEMS.copy(), POSITIONS.copy()
    attributes = [a.copy() for a in ATTRIBUTES]
    for x in [items, positions, *attributes]:
        x[~REAL] = rng.normal(size=x[~REAL].shape) * 10.0
    np.testing.assert_allclose(np.asarray(_call(layer, items, attributes, positions))[REAL], before[REAL], atol=1e-6)


@pytest.mark.parametrize("fusion", ["concat", "gate"])
def test_fused_key_rows_are_indexed_by_position(fusion):
    # More left padding moves every key to another slot but not to another position.
    layer = _layer(fusion)
    _call(layer)
    randomize_weights(layer.weights)
    ids = np.concatenate([np.zeros((2, 1), "int32"), ITEM_IDS], axis=1)
    pad = lambda x: np.concatenate([np.zeros_like(x[:, :1]), x], axis=1)  # noqa: E731
    shifted = layer(
        pad(ITEMS),
        attention_mask=np_attention_mask(ids),
        attribute_inputs=[pad(a) for a in ATTRIBUTES],
        position_inputs=pad(POSITIONS),
    )
    np.testing.assert_allclose(np.asarray(shifted)[:, 1:][REAL], np.asarray(_call(layer))[REAL], atol=1e-6)


def test_each_fusion_and_each_source_changes_the_output():
    outputs = {}
    for fusion in ("sum", "concat", "gate"):
        layer = _layer(fusion)
        _call(layer)
        randomize_weights(layer.weights)
        outputs[fusion] = np.asarray(_call(layer))
        for k, x in enumerate([*ATTRIBUTES, POSITIONS]):
            changed = [ATTRIBUTES[0], ATTRIBUTES[1], POSITIONS]
            changed[k] = x[:, ::-1].copy()
            assert not np.allclose(_call(layer, ITEMS, changed[:2], changed[2])[REAL], outputs[fusion][REAL])
    assert not np.allclose(outputs["sum"], outputs["concat"])
    assert not np.allclose(outputs["concat"], outputs["gate"])


@pytest.mark.parametrize("fusion", ["sum", "concat", "gate"])
def test_gradients_reach_every_weight(fusion):
    layer = _layer(fusion)
    _call(layer)
    projection = np.random.default_rng(0).normal(size=(8,)).astype("float32")
    assert_gradients_reach_every_weight(
        layer.trainable_variables, lambda: keras.ops.sum(keras.ops.tanh(_call(layer) * 10.0) * projection)
    )


def test_dropout_only_in_training():
    layer = _layer("gate", dropout=0.5)
    assert_dropout_only_in_training(
        layer,
        ITEMS,
        attention_mask=np_attention_mask(ITEM_IDS),
        attribute_inputs=ATTRIBUTES,
        position_inputs=POSITIONS,
    )


def test_component_of_transformer_block():
    attention = _layer("gate")
    block = TransformerBlock(hidden_dim=8, num_heads=2, ff_dim=16, attention=attention, dropout=0.0)
    outputs = block(
        ITEMS, attention_mask=np_attention_mask(ITEM_IDS), attribute_inputs=ATTRIBUTES, position_inputs=POSITIONS
    )
    assert tuple(outputs.shape) == (2, 6, 8)
    assert block.self_attention is attention
    # The block's own weights (2 layer norms, 2 feed-forward denses) and the attention's.
    assert len(block.trainable_weights) == 8 + len(attention.trainable_weights)
    assert len({id(w) for w in block.trainable_weights}) == len(block.trainable_weights)
    run_serialization_test(block)


def test_call_argument_errors():
    layer = _layer("sum")
    with pytest.raises(ValueError, match="one tensor per entry of attribute_dims=\\[4, 6\\]"):
        _call(layer, attributes=[ATTRIBUTES[0]])
    with pytest.raises(ValueError, match="position_inputs"):
        layer(ITEMS, attribute_inputs=ATTRIBUTES)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"hidden_dim": 0}, "hidden_dim=0"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"attribute_dims": [4, 1]}, r"attribute_dims=\[4, 1\]"),
        ({"attribute_dims": 4}, "attribute_dims=4"),
        ({"fusion": "mean"}, "fusion='mean'"),
        ({"fusion": "gate", "max_len": None}, "max_len=None"),
        ({"fusion": "concat", "max_len": 0}, "max_len=0"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"score_scale": "sqrt"}, "score_scale='sqrt'"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    arguments = {"hidden_dim": 8, "num_heads": 2, "attribute_dims": [4], "fusion": "sum", "max_len": MAX_LEN}
    with pytest.raises(ValueError, match=bad):
        DecoupledAttention(**{**arguments, **kwargs})


@pytest.mark.tensorflow_only  # traces with tf.function
@pytest.mark.parametrize("fusion", ["concat", "gate"])
def test_unknown_window_length_in_a_graph_gives_the_eager_values(fusion):
    # Keras relaxes the traced length to None across length buckets: the fused rows are then cut in the graph.
    import tensorflow as tf

    layer = _layer(fusion)
    _call(layer)
    randomize_weights(layer.weights)
    mask = np_attention_mask(ITEM_IDS)
    spec = tf.TensorSpec((None, None, None), "float32")
    traced = tf.function(
        lambda items, attributes, positions, mask: _call(layer, items, attributes, positions, mask),
        input_signature=[spec, [spec, spec], spec, tf.TensorSpec((None, None, None), "bool")],
    )
    np.testing.assert_allclose(
        np.asarray(traced(ITEMS, ATTRIBUTES, POSITIONS, mask)), np.asarray(_call(layer, mask=mask)), atol=1e-6
    )


@pytest.mark.parametrize("fusion", ["sum", "gate"])
def test_position_table_with_ids_equals_the_gathered_embeddings(fusion):
    layer = _layer(fusion)
    _call(layer)
    randomize_weights(layer.weights)
    rng = np.random.default_rng(7)
    table = rng.normal(size=(MAX_LEN, 8)).astype("float32")
    ids = np.clip(np.cumsum(ITEM_IDS != 0, axis=1) - 1, 0, MAX_LEN - 1)
    mask = np_attention_mask(ITEM_IDS)
    expected = _call(layer, positions=table[ids], mask=mask)
    from_table = _call(layer, positions=table, mask=mask, position_ids=ids)
    np.testing.assert_allclose(np.asarray(from_table), np.asarray(expected), atol=1e-5)
    with pytest.raises(ValueError, match="position table"):
        _call(layer, positions=table[ids], mask=mask, position_ids=ids)


@pytest.mark.parametrize("fusion", ["sum", "concat", "gate"])
@pytest.mark.parametrize("causal", [True, False])
def test_last_query_only_gives_the_last_slot_of_the_full_output(fusion, causal):
    layer = _layer(fusion)
    mask = np_attention_mask(ITEM_IDS, causal=causal)
    _call(layer, mask=mask)
    randomize_weights(layer.weights)
    full = np.asarray(_call(layer, mask=mask))
    last = np.asarray(_call(layer, mask=mask, last_query_only=True))
    assert last.shape == (full.shape[0], 1, full.shape[2])
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-5)
    # With the position table and ids too (the DIF-SR backbone's call).
    table = np.random.default_rng(8).normal(size=(MAX_LEN, 8)).astype("float32")
    ids = np.clip(np.cumsum(ITEM_IDS != 0, axis=1) - 1, 0, MAX_LEN - 1)
    full = np.asarray(_call(layer, positions=table, mask=mask, position_ids=ids))
    last = np.asarray(_call(layer, positions=table, mask=mask, position_ids=ids, last_query_only=True))
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-5)


@pytest.mark.tensorflow_only  # traces with tf.function
@pytest.mark.parametrize("fusion", ["concat", "gate"])
@pytest.mark.parametrize("causal", [True, False])
def test_a_batch_without_padding_matches_numpy_reference_eager_and_traced(fusion, causal):
    # Every key real (evaluation batches of one length), in eager and in a graph of unknown length.
    import tensorflow as tf

    rows = slice(1, 2)  # the unpadded sequence of ITEM_IDS
    ids, items, positions = ITEM_IDS[rows], ITEMS[rows], POSITIONS[rows]
    attributes = [a[rows] for a in ATTRIBUTES]
    assert np.all(ids != 0)
    mask = np_attention_mask(ids, causal=causal)
    layer = _layer(fusion)
    _call(layer, items, attributes, positions, mask)
    randomize_weights(layer.weights)
    expected, _ = np_decoupled_attention(layer, items, attributes, positions, mask)
    spec = tf.TensorSpec((None, None, None), "float32")
    traced = tf.function(
        lambda items, attributes, positions, mask: _call(layer, items, attributes, positions, mask),
        input_signature=[spec, [spec, spec], spec, tf.TensorSpec((None, None, None), "bool")],
    )
    np.testing.assert_allclose(np.asarray(_call(layer, items, attributes, positions, mask)), expected, atol=1e-4)
    np.testing.assert_allclose(np.asarray(traced(items, attributes, positions, mask)), expected, atol=1e-4)
