import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    ITEM_IDS,
    REAL,
    assert_gradients_reach_every_weight,
    assert_old_config_key_loads,
    hidden_inputs,
    np_attention_mask,
    np_dense,
    np_gelu,
    np_layer_norm,
    np_softmax,
    randomize_weights,
    run_layer_test,
    run_serialization_test,
)

from tfsidefuse.layers import FusedAttention, TransformerBlock

MASK = np_attention_mask(ITEM_IDS, causal=True)
X, CATEGORY, RATING, POSITION = (hidden_inputs(seed=s) for s in range(4))
FULL = {"use_hie": True, "attribute_output": True, "position_output": True}


def _basis(rank: int = 3, seed: int = 5) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(8, rank)))
    return q.astype("float32")


def np_fused_attention(layer, x, attributes, position, mask, basis):
    """`(output, side_outputs)` of a `FusedAttention` at inference, from its weights (docs/models.md#asif)."""
    h, d = layer.num_heads, layer.hidden_dim
    dh = d // h

    def split(v):
        b, t, _ = v.shape
        return v.reshape(b, t, h, dh).transpose(0, 2, 1, 3)

    def merge(v):
        b, _, t, _ = v.shape
        return v.transpose(0, 2, 1, 3).reshape(b, t, d)

    def logits(name, source):
        query = split(np_dense(getattr(layer, f"{name}query_dense"), source))
        key = split(np_dense(getattr(layer, f"{name}key_dense"), source))
        return query @ key.transpose(0, 1, 3, 2)

    def attend(scores, value):
        if mask is not None:
            scores = scores + (1.0 - mask[:, None].astype("float64")) * -10000.0
        return merge(np_softmax(scores) @ split(value))

    def fuse(features):
        if len(features) == 1 and layer.fusion != "concat":
            return features[0]
        fusion = layer.embedding_fusion
        if layer.fusion == "add":
            return np.sum(features, axis=0)
        if layer.fusion == "concat":
            return np_dense(fusion.projection, np.concatenate(features, axis=-1))
        gates = np_softmax(np.stack([f @ np.asarray(fusion.gate_dense.kernel)[:, 0] for f in features], axis=-1))
        return sum(gates[..., k : k + 1] * f for k, f in enumerate(features))

    attribute_path = layer.mode != "vanilla" and (layer.use_hie or layer.attribute_output)
    z = None
    if layer.mode == "fused" or (layer.mode == "item_only" and attribute_path):
        z = fuse([x] + attributes)
    elif layer.mode == "decoupled" and attribute_path:
        z = fuse(attributes)
    c_item = logits("", z if layer.mode == "fused" else x)
    if layer.decoupled_position:
        c_position = logits("position_", position)
        scale = math.sqrt(dh) if layer.score_scale == "head_dim" else math.sqrt(2 * dh)
        h_x = attend((c_item + c_position) / scale, np_dense(layer.value_dense, x))
    else:
        h_x = attend(c_item / math.sqrt(dh), np_dense(layer.value_dense, x))
    side = {}
    if attribute_path:
        c_attribute = logits("attribute_", z) if layer.mode == "decoupled" else c_item
        h_a = attend(c_attribute / math.sqrt(dh), np_dense(layer.attribute_value_dense, z))
        if layer.use_hie:
            phi = {
                "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
                "relu": lambda v: np.maximum(v, 0.0),
                "tanh": np.tanh,
                "identity": lambda v: v,
            }[layer.hie_activation]
            u_x, u_a = h_x @ basis, h_a @ basis
            h_x = h_x + (phi(u_x * u_a) * u_a) @ basis.T
        if layer.attribute_output:
            side = {"attribute": np_dense(layer.attribute_output_dense, h_a), "attribute_input": z}
    if layer.position_output:
        h_p = attend(c_position / math.sqrt(dh), np_dense(layer.position_value_dense, position))
        side["position"] = np_dense(layer.position_output_dense, h_p)
    return np_dense(layer.attention_output_dense, h_x), side


def _layer(**kwargs) -> FusedAttention:
    keras.utils.set_random_seed(0)
    layer = FusedAttention(**{"hidden_dim": 8, "num_heads": 2, "num_attribute_inputs": 2, **kwargs})
    layer.build((None, None, 8))
    randomize_weights(layer.trainable_weights)
    return layer


def _call(layer, x=X, category=CATEGORY, rating=RATING, position=POSITION, basis=None, **kwargs):
    kwargs.setdefault("attention_mask", MASK)
    if layer.decoupled_position:
        kwargs["position_inputs"] = position
    if layer.use_hie:
        kwargs["hie_basis"] = _basis() if basis is None else basis
    outputs, side_outputs = layer(
        x, attribute_inputs=[category, rating][: layer.num_attribute_inputs], return_side_outputs=True, **kwargs
    )
    return np.asarray(outputs), {k: np.asarray(v) for k, v in side_outputs.items()}


def test_layer_behaviors(tmp_path):
    run_layer_test(
        FusedAttention,
        {"hidden_dim": 8, "num_heads": 2, "num_attribute_inputs": 0, "use_hie": False},
        {"query_input": X, "attention_mask": MASK, "position_inputs": POSITION},
        (2, 6, 8),
        tmp_path,
        # query, key, value, output, position query and key: kernel and bias each.
        expected_num_trainable_weights=12,
    )


def test_weights_of_the_full_layer():
    layer = _layer(**FULL)
    names = sorted({w.path.split("/")[-2] for w in layer.trainable_weights})
    assert names == sorted(
        [
            "query",
            "key",
            "value",
            "attention_output",
            "position_query",
            "position_key",
            "position_value",
            "position_output",
            "attribute_value",
            "attribute_output",
        ]
    )
    # Only the paths something reads are built.
    assert not hasattr(_layer(use_hie=False), "attribute_value_dense")
    assert not hasattr(_layer(decoupled_position=False), "position_query_dense")


@pytest.mark.parametrize(
    "kwargs",
    [
        FULL,
        {**FULL, "fusion": "concat", "hie_activation": "tanh"},
        {**FULL, "fusion": "gate", "score_scale": "double_head_dim"},
        {**FULL, "mode": "decoupled", "hie_activation": "relu"},
        {**FULL, "mode": "item_only", "hie_activation": "identity"},
        {"mode": "vanilla", "use_hie": False, "position_output": True},
        {"use_hie": True, "decoupled_position": False},
        {"use_hie": False, "attribute_output": True, "num_heads": 1},
    ],
)
def test_matches_numpy_reference(kwargs):
    layer = _layer(**kwargs)
    outputs, side = _call(layer)
    attributes = [CATEGORY, RATING][: layer.num_attribute_inputs]
    expected, expected_side = np_fused_attention(layer, X, attributes, POSITION, MASK, _basis())
    np.testing.assert_allclose(outputs[REAL], expected[REAL], atol=1e-4)
    assert sorted(side) == sorted(expected_side)
    for key in side:
        np.testing.assert_allclose(side[key][REAL], expected_side[key][REAL], atol=1e-4)


def test_masked_keys_get_zero_probability():
    """Future and padded keys never reach a real query, in any of the three paths."""
    layer = _layer(**FULL)
    outputs, side = _call(layer)
    rng = np.random.default_rng(9)
    for slot in range(1, 6):
        changed = [v.copy() for v in (X, CATEGORY, RATING, POSITION)]
        for v in changed:
            # Future slots, and the padded slots of the first row.
            v[:, slot:] = rng.normal(size=v[:, slot:].shape)
            v[0, :2] = rng.normal(size=v[0, :2].shape)
        new_outputs, new_side = _call(layer, *changed)
        visible = REAL.copy()
        visible[:, slot:] = False
        np.testing.assert_allclose(new_outputs[visible], outputs[visible], atol=1e-5)
        for key in ("attribute", "position"):
            np.testing.assert_allclose(new_side[key][visible], side[key][visible], atol=1e-5)


def test_every_flag_changes_the_output():
    def output(**kwargs):
        layer = _layer(**{**FULL, **kwargs})
        # Same values for the weights every variant has.
        for w in layer.weights:
            if w.path in shared:
                w.assign(shared[w.path])
        return _call(layer)[0][REAL]

    reference = _layer(**FULL)
    shared = {w.path: np.asarray(w) for w in reference.weights}
    base = output()
    variants = {
        "decoupled": {"mode": "decoupled"},
        "item_only": {"mode": "item_only"},
        "vanilla": {"mode": "vanilla", "use_hie": False, "attribute_output": False},
        "no_hie": {"use_hie": False},
        "double_head_dim": {"score_scale": "double_head_dim"},
        "relu": {"hie_activation": "relu"},
        "tanh": {"hie_activation": "tanh"},
        "identity": {"hie_activation": "identity"},
        "gate": {"fusion": "gate"},
        "no_position": {"decoupled_position": False, "position_output": False},
    }
    results = {name: output(**kwargs) for name, kwargs in variants.items()}
    for name, result in results.items():
        assert not np.allclose(result, base, atol=1e-4), name
    # A different basis changes HIE.
    layer = _layer(**FULL)
    assert not np.allclose(_call(layer, basis=_basis(seed=7))[0], _call(layer)[0], atol=1e-4)


def test_gradients_reach_every_weight():
    layer = _layer(**FULL, fusion="gate")
    inputs = [tf.constant(v) for v in (X, CATEGORY, RATING, POSITION)]
    projection = np.random.default_rng(0).normal(size=(8,)).astype("float32")

    def loss():
        output, side_outputs = layer(
            inputs[0],
            attention_mask=MASK,
            attribute_inputs=inputs[1:3],
            position_inputs=inputs[3],
            hie_basis=_basis(),
            return_side_outputs=True,
            training=True,
        )
        total = keras.ops.sum(keras.ops.tanh(output) * projection)
        for key in ("attribute", "position"):
            total = total + keras.ops.sum(keras.ops.tanh(side_outputs[key]) * projection)
        return total

    assert_gradients_reach_every_weight(layer.trainable_variables, loss)


def test_dropout_only_in_training():
    layer = _layer(**FULL, dropout=0.5)
    inference = _call(layer)[0]
    np.testing.assert_allclose(_call(layer)[0], inference)
    assert not np.allclose(_call(layer, training=True)[0], inference)


def test_component_of_transformer_block():
    attention = FusedAttention(8, 2, num_attribute_inputs=2, attribute_output=True, position_output=True)
    block = TransformerBlock(8, 2, 16, dropout=0.0, attention_dropout=0.0, attention=attention)
    block.build((None, None, 8))
    randomize_weights(block.trainable_weights)
    assert all(w.path.startswith(block.name + "/") for w in block.weights)
    kwargs = {"attribute_inputs": [CATEGORY, RATING], "position_inputs": POSITION, "hie_basis": _basis()}
    outputs = block(X, attention_mask=MASK, **kwargs)
    attended, side = np_fused_attention(attention, X, [CATEGORY, RATING], POSITION, MASK, _basis())
    hidden = np_layer_norm(block.attention_layer_norm, X + attended)
    feedforward = np_dense(
        block.feedforward_output_dense, np_gelu(np_dense(block.feedforward_intermediate_dense, hidden))
    )
    expected = np_layer_norm(block.feedforward_layer_norm, hidden + feedforward)
    np.testing.assert_allclose(np.asarray(outputs)[REAL], expected[REAL], atol=1e-4)
    # The block hands back the side streams of the same call, beside the same output.
    block_outputs, side_outputs = block(X, attention_mask=MASK, return_side_outputs=True, **kwargs)
    np.testing.assert_allclose(np.asarray(block_outputs), np.asarray(outputs), atol=1e-6)
    np.testing.assert_allclose(np.asarray(side_outputs["position"])[REAL], side["position"][REAL], atol=1e-4)
    run_serialization_test(block)


def test_mixed_precision():
    layer = FusedAttention(8, 2, num_attribute_inputs=2, attribute_output=True, dtype="mixed_float16")
    outputs = layer(
        X, attention_mask=MASK, attribute_inputs=[CATEGORY, RATING], position_inputs=POSITION, hie_basis=_basis()
    )
    assert keras.backend.standardize_dtype(outputs.dtype) == "float16"
    assert all(w.dtype == "float32" for w in layer.weights)
    assert np.all(np.isfinite(np.asarray(outputs, dtype="float32")))


def test_missing_call_inputs_raise():
    layer = _layer(**FULL)
    with pytest.raises(ValueError, match="Expected 2 attribute input"):
        layer(X, attribute_inputs=[CATEGORY], position_inputs=POSITION, hie_basis=_basis())
    with pytest.raises(ValueError, match="position_inputs"):
        layer(X, attribute_inputs=[CATEGORY, RATING], hie_basis=_basis())
    with pytest.raises(ValueError, match="hie_basis"):
        layer(X, attribute_inputs=[CATEGORY, RATING], position_inputs=POSITION)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"num_heads": 3}, "num_heads=3"),
        ({"num_attribute_inputs": -1}, "num_attribute_inputs=-1"),
        ({"mode": "mixed"}, "mode='mixed'"),
        ({"fusion": "mean"}, "fusion='mean'"),
        ({"gate_scorer": "deep"}, "gate_scorer='deep'"),
        ({"score_scale": "none"}, "score_scale='none'"),
        ({"hie_activation": "gelu"}, "hie_activation='gelu'"),
        ({"use_hie": 1}, "use_hie=1"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"mode": "decoupled", "num_attribute_inputs": 0}, "num_attribute_inputs >= 1"),
        ({"mode": "vanilla"}, "use_hie=True"),
        ({"position_output": True, "decoupled_position": False}, "position_output=True"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        FusedAttention(**{"hidden_dim": 8, "num_heads": 2, **kwargs})


def test_config_with_the_old_score_scaling_key_loads():
    """Version 0.2.0 saved `score_scale` as `score_scaling`; such a config still builds the same layer."""
    layer = FusedAttention(8, 2, num_attribute_inputs=2, score_scale="double_head_dim")
    restored = assert_old_config_key_loads(layer, "score_scaling", "score_scale")
    assert restored.score_scale == "double_head_dim"


def test_returns_the_item_path_attention_probabilities():
    layer = _layer(**FULL)
    outputs, _ = _call(layer)
    kwargs = {"attention_mask": MASK, "position_inputs": POSITION, "hie_basis": _basis()}
    with_scores, probabilities = layer(
        X, attribute_inputs=[CATEGORY, RATING][: layer.num_attribute_inputs], return_attention_scores=True, **kwargs
    )
    probabilities = np.asarray(probabilities)
    np.testing.assert_allclose(np.asarray(with_scores), outputs, atol=1e-6)
    assert probabilities.shape == (2, layer.num_heads, 6, 6)
    real_rows = np.broadcast_to(REAL[:, None, :, None], probabilities.shape)[..., 0]
    np.testing.assert_allclose(probabilities.sum(axis=-1)[real_rows], 1.0, atol=1e-5)
    # Future and padded keys get no probability.
    disallowed = np.broadcast_to(~MASK[:, None], probabilities.shape)
    assert np.all(probabilities[disallowed & real_rows[..., None]] < 1e-6)


def test_side_outputs_are_returned_after_the_probabilities():
    layer = _layer(**FULL)
    outputs, side = _call(layer)
    kwargs = {"attention_mask": MASK, "position_inputs": POSITION, "hie_basis": _basis()}
    returned = layer(
        X,
        attribute_inputs=[CATEGORY, RATING],
        return_attention_scores=True,
        return_side_outputs=True,
        **kwargs,
    )
    assert len(returned) == 3
    np.testing.assert_allclose(np.asarray(returned[0]), outputs, atol=1e-6)
    assert tuple(returned[1].shape) == (2, layer.num_heads, 6, 6)
    assert sorted(returned[2]) == sorted(side)
    for key, value in side.items():
        np.testing.assert_allclose(np.asarray(returned[2][key]), value, atol=1e-6)
    # Without either flag the layer returns its output alone.
    assert not isinstance(layer(X, attribute_inputs=[CATEGORY, RATING], **kwargs), tuple)
