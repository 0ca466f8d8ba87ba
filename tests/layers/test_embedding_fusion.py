import keras
import numpy as np
import pytest
from helpers import (
    assert_gradients_reach_every_weight,
    np_dense,
    np_softmax,
    run_model_saving_test,
    run_serialization_test,
)

from tfsidefuse.layers import EmbeddingFusion

RNG = np.random.default_rng(0)
# Three features [batch=2, seq_len=4, d=8].
FEATURES = [RNG.normal(size=(2, 4, 8)).astype("float32") for _ in range(3)]
MODES = [("add", "linear"), ("concat", "linear"), ("gate", "linear"), ("gate", "mlp")]
# Trainable weights per mode: none; kernel + bias; w; W_1, b_1, w_2.
NUM_WEIGHTS = {("add", "linear"): 0, ("concat", "linear"): 2, ("gate", "linear"): 1, ("gate", "mlp"): 3}


def _fusion(mode: str, gate_scorer: str = "linear", features=FEATURES) -> EmbeddingFusion:
    fusion = EmbeddingFusion(8, mode=mode, gate_scorer=gate_scorer)
    fusion(features)
    rng = np.random.default_rng(1)
    for w in fusion.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    return fusion


def _np_fusion(fusion: EmbeddingFusion, features: list[np.ndarray]) -> np.ndarray:
    """docs/models.md#fusion-functions, written from the layer's weights."""
    features = [f.astype("float64") for f in features]
    if fusion.mode == "add":
        return np.sum(features, axis=0)
    if fusion.mode == "concat":
        return np_dense(fusion.projection, np.concatenate(features, axis=-1))
    if fusion.gate_scorer == "linear":
        scores = [f @ np.asarray(fusion.gate_dense.kernel)[:, 0] for f in features]
    else:
        hidden = [np.maximum(np_dense(fusion.gate_hidden_dense, f), 0.0) for f in features]
        scores = [h @ np.asarray(fusion.gate_output_dense.kernel)[:, 0] for h in hidden]
    gates = np_softmax(np.stack(scores, axis=-1))  # [batch, seq_len, m]
    return sum(gates[..., k : k + 1] * f for k, f in enumerate(features))


@pytest.mark.parametrize("mode, gate_scorer", MODES)
def test_layer_behaviors(mode, gate_scorer, tmp_path):
    init_kwargs = {"hidden_dim": 8, "mode": mode, "gate_scorer": gate_scorer}
    fusion = EmbeddingFusion(**init_kwargs)
    assert all(key in fusion.get_config() for key in init_kwargs)
    run_serialization_test(fusion)

    assert tuple(fusion(FEATURES).shape) == (2, 4, 8)
    assert len(fusion.trainable_weights) == NUM_WEIGHTS[(mode, gate_scorer)]
    assert all(len(w.path.split("/")) >= 2 for w in fusion.weights)

    symbolic = [keras.Input(shape=(None, 8), name=f"feature_{k}") for k in range(3)]
    symbolic_outputs = EmbeddingFusion(**init_kwargs)(symbolic)
    assert tuple(symbolic_outputs.shape) == (None, None, 8)
    run_model_saving_test(keras.Model(symbolic, symbolic_outputs), FEATURES, tmp_path)

    mixed = EmbeddingFusion(**init_kwargs, dtype="mixed_float16")
    outputs = mixed(FEATURES)
    assert keras.backend.standardize_dtype(outputs.dtype) == "float16"
    assert all(w.dtype == "float32" for w in mixed.weights)
    assert np.all(np.isfinite(np.asarray(outputs, dtype="float32")))


@pytest.mark.parametrize("mode, gate_scorer", MODES)
def test_matches_numpy_reference(mode, gate_scorer):
    fusion = _fusion(mode, gate_scorer)
    np.testing.assert_allclose(fusion(FEATURES), _np_fusion(fusion, FEATURES), rtol=1e-5, atol=1e-5)


@pytest.mark.tensorflow_only  # traces with tf.function
@pytest.mark.parametrize("mode, gate_scorer", MODES)
@pytest.mark.parametrize("width", [1, 3, 8])
def test_width_fuses_the_leading_entries_of_zero_extended_inputs(mode, gate_scorer, width):
    import tensorflow as tf

    fusion = _fusion(mode, gate_scorer)
    padded = [np.where(np.arange(8) < width, f, 0.0).astype("float32") for f in FEATURES]
    expected = _np_fusion(fusion, padded)[..., :width]
    short = [f[..., :width] for f in FEATURES]
    np.testing.assert_allclose(fusion(short, width=width), expected, rtol=1e-5, atol=1e-5)
    # A width only known when the graph runs.
    spec = tf.TensorSpec((None, None, None), "float32")
    traced = tf.function(lambda xs, w: fusion(xs, width=w), input_signature=[[spec] * 3, tf.TensorSpec((), "int32")])
    np.testing.assert_allclose(traced(short, tf.constant(width)), expected, rtol=1e-5, atol=1e-5)


def test_width_needs_concat_inputs_of_hidden_dim():
    features = [FEATURES[0], FEATURES[1][..., :3]]
    fusion = _fusion("concat", features=features)
    with pytest.raises(ValueError, match="hidden_dim=8"):
        fusion([f[..., :2] for f in features], width=2)


def test_concat_accepts_different_widths():
    features = [FEATURES[0], FEATURES[1][..., :3]]
    fusion = _fusion("concat", features=features)
    assert tuple(fusion.projection.kernel.shape) == (11, 8)
    np.testing.assert_allclose(fusion(features), _np_fusion(fusion, features), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate_scorer", ["linear", "mlp"])
def test_gate_is_a_convex_combination(gate_scorer):
    fusion = _fusion("gate", gate_scorer)
    # Equal features: whatever the gates, they sum to one.
    np.testing.assert_allclose(fusion([FEATURES[0]] * 3), FEATURES[0], rtol=1e-5, atol=1e-5)
    # One feature: its gate is one.
    np.testing.assert_allclose(_fusion("gate", gate_scorer, [FEATURES[1]])([FEATURES[1]]), FEATURES[1], atol=1e-6)


@pytest.mark.parametrize("mode, gate_scorer", MODES[1:])
def test_gradients_reach_every_weight(mode, gate_scorer):
    fusion = EmbeddingFusion(8, mode=mode, gate_scorer=gate_scorer)
    fusion(FEATURES)
    assert_gradients_reach_every_weight(
        fusion.trainable_variables, lambda: keras.ops.sum(keras.ops.tanh(fusion(FEATURES)) * FEATURES[2])
    )


@pytest.mark.parametrize("mode", ["add", "gate"])
def test_add_and_gate_need_equal_widths(mode):
    with pytest.raises(ValueError, match=r"hidden_dim=8.*\[8, 3\]"):
        EmbeddingFusion(8, mode=mode)([FEATURES[0], FEATURES[1][..., :3]])


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"hidden_dim": 0}, "hidden_dim=0"),
        ({"hidden_dim": 8, "mode": "mean"}, "mode='mean'"),
        ({"hidden_dim": 8, "mode": "gate", "gate_scorer": "deep"}, "gate_scorer='deep'"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        EmbeddingFusion(**kwargs)
