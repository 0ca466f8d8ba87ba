"""Shared checks for layers, backbones and models, shared test inputs, and plain-numpy references.

Every layer test runs :func:`run_layer_test`, every backbone test
:func:`run_backbone_test`, so all of them get the same checks: config round
trip, Keras serialization, eager and symbolic calls, weight counts, one `fit`
step, mixed precision, and save/reload of a small model with equal outputs.
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

#: ../shared/data beside the project root; tests that need it skip when it is absent.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """The directory of a real dataset in ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset not available: {path}")
    return path


# --------------------------------------------------------------------------------------------------------------------
# Layer and model checks
# --------------------------------------------------------------------------------------------------------------------


def _as_kwargs(layer_cls: type, input_data: Any) -> dict[str, Any]:
    """`input_data` as call keyword arguments: a dict is used as is, a tensor is the first argument."""
    if isinstance(input_data, dict):
        return dict(input_data)
    first_arg = next(iter(_call_arguments(layer_cls)))
    return {first_arg: input_data}


def _call_arguments(layer_cls: type) -> list[str]:
    return [name for name in inspect.signature(layer_cls.call).parameters if name != "self"]


def _shapes(outputs: Any) -> Any:
    return keras.tree.map_structure(lambda x: tuple(x.shape), outputs)


def _is_shape(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and all(d is None or isinstance(d, int) for d in x)


def _expected_shapes(expected: Any, batch_size: Any = "keep") -> Any:
    """A shape, or a tuple of shapes, as tuples; the batch dimension replaced unless `"keep"`."""
    if _is_shape(expected):
        return tuple(expected) if batch_size == "keep" else (batch_size,) + tuple(expected)[1:]
    return tuple(_expected_shapes(e, batch_size) for e in expected)


def _symbolic_inputs(inputs: dict[str, Any]) -> dict[str, keras.KerasTensor]:
    return {
        name: keras.Input(
            shape=np.shape(value)[1:], dtype=keras.backend.standardize_dtype(np.asarray(value).dtype), name=name
        )
        for name, value in inputs.items()
    }


def _is_float(x: Any) -> bool:
    return "float" in keras.backend.standardize_dtype(x.dtype)


def run_serialization_test(instance: Any) -> None:
    """`from_config(get_config())` and `keras.saving` (de)serialization give an equal config."""
    config = instance.get_config()
    revived = type(instance).from_config(config)
    assert revived.get_config() == config
    serialized = keras.saving.serialize_keras_object(instance)
    deserialized = keras.saving.deserialize_keras_object(serialized)
    assert type(deserialized) is type(instance)
    assert deserialized.get_config() == config


def run_model_saving_test(model: keras.Model, input_data: Any, tmp_dir: str | os.PathLike) -> keras.Model:
    """Saves `model` as `.keras`, reloads it and checks equal outputs; returns the reloaded model."""
    path = os.path.join(tmp_dir, "model.keras")
    expected = model(input_data, training=False)
    model.save(path)
    restored = keras.models.load_model(path)
    actual = restored(input_data, training=False)
    expected, actual = keras.tree.flatten(expected), keras.tree.flatten(actual)
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    return restored


def run_layer_test(
    layer_cls: type,
    init_kwargs: dict[str, Any],
    input_data: Any,
    expected_output_shape: Any,
    tmp_dir: str | os.PathLike,
    call_kwargs: dict[str, Any] | None = None,
    expected_num_trainable_weights: int | None = None,
    expected_num_non_trainable_weights: int = 0,
    run_training_check: bool = True,
    expected_mixed_precision_dtype: str | None = "float16",
) -> None:
    """keras-hub style battery of checks for one layer.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_data: the first call argument (array), or a dict of call
            argument name -> array.
        expected_output_shape: output shape (a tuple, or a structure of
            tuples for structured outputs) for `input_data`.
        tmp_dir: a temporary directory for the saved model.
        call_kwargs: extra non-tensor call arguments.
        expected_num_trainable_weights: checked when given.
        expected_num_non_trainable_weights: checked always.
        run_training_check: fit one step of a model made of the layer (float
            outputs with trainable weights only).
        expected_mixed_precision_dtype: dtype of the float outputs under the
            `mixed_float16` policy; `None` skips the check.
    """
    call_kwargs = call_kwargs or {}
    inputs = _as_kwargs(layer_cls, input_data)

    # Config round trip and every constructor argument in the config.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    for key in init_kwargs:
        assert key in config, f"{layer_cls.__name__}.get_config() lacks the constructor argument {key!r}"
    run_serialization_test(layer)

    # Eager call, weight counts, built weights.
    outputs = layer(**inputs, **call_kwargs)
    assert _shapes(outputs) == _expected_shapes(expected_output_shape)
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights
    assert all(len(w.path.split("/")) >= 2 for w in layer.weights)

    # Symbolic call: same shapes with an unknown batch size.
    symbolic = _symbolic_inputs(inputs)
    symbolic_outputs = layer_cls(**init_kwargs)(**symbolic, **call_kwargs)
    assert _shapes(symbolic_outputs) == _expected_shapes(expected_output_shape, batch_size=None)

    # Save and reload a small functional model around the layer.
    model = keras.Model(symbolic, symbolic_outputs)
    run_model_saving_test(model, inputs, tmp_dir)

    # One training step moves the trainable weights.
    if run_training_check and not isinstance(symbolic_outputs, (tuple, list)) and _is_float(symbolic_outputs):
        if model.trainable_weights:
            before = [np.array(w) for w in model.trainable_weights]
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", run_eagerly=True)
            targets = np.ones(np.shape(outputs), dtype="float32")
            model.fit(inputs, targets, batch_size=len(targets), epochs=1, verbose=0)
            assert any(not np.allclose(b, np.array(w)) for b, w in zip(before, model.trainable_weights))

    # Mixed precision: float32 variables, float outputs in the expected dtype.
    if expected_mixed_precision_dtype is not None:
        mixed = layer_cls(**init_kwargs, dtype="mixed_float16")
        mixed_outputs = mixed(**inputs, **call_kwargs)
        for w in mixed.weights:
            if _is_float(w):
                assert w.dtype == "float32"
        for x in keras.tree.flatten(mixed_outputs):
            if _is_float(x):
                assert keras.backend.standardize_dtype(x.dtype) == expected_mixed_precision_dtype
                assert np.all(np.isfinite(np.asarray(x, dtype="float32")))


def run_backbone_test(
    backbone_cls: type,
    init_kwargs: dict[str, Any],
    input_data: dict[str, Any],
    tmp_dir: str | os.PathLike,
) -> None:
    """Checks shared by every backbone.

    Config round trip, eager and symbolic calls with dynamic sequence length,
    extra input keys ignored, mixed precision, and save/reload inside a
    `NextItemModel` with equal predictions.
    """
    from tfsidefuse.models import NextItemModel

    backbone = backbone_cls(**init_kwargs)
    for key in init_kwargs:
        assert key in backbone.get_config()
    run_serialization_test(backbone)

    batch_size, seq_len = np.shape(input_data["item_ids"])
    hidden = sequence_output(backbone, input_data)
    assert tuple(hidden.shape) == (batch_size, seq_len, backbone.hidden_dim)
    # Dynamic padding: a shorter batch goes through the same weights.
    shorter = {k: v[:, 2:] for k, v in input_data.items()}
    assert tuple(sequence_output(backbone, shorter).shape) == (batch_size, seq_len - 2, backbone.hidden_dim)
    assert tuple(backbone.item_table().shape) == (backbone.num_items, backbone.hidden_dim)

    # Keys the backbone does not use are ignored.
    unused = dict(input_data, some_other_feature=np.ones_like(input_data["item_ids"]))
    np.testing.assert_allclose(sequence_output(backbone, unused), hidden, atol=1e-6)

    symbolic = {k: keras.Input(shape=(None,), dtype="int32", name=k) for k in input_data}
    assert tuple(sequence_output(backbone_cls(**init_kwargs), symbolic).shape) == (None, None, backbone.hidden_dim)

    mixed = backbone_cls(**init_kwargs, dtype="mixed_float16")
    mixed_hidden = sequence_output(mixed, input_data)
    assert keras.backend.standardize_dtype(mixed_hidden.dtype) == "float16"
    assert np.all(np.isfinite(np.asarray(mixed_hidden, dtype="float32")))

    run_model_saving_test(NextItemModel(backbone), input_data, tmp_dir)


def sequence_output(backbone: Any, inputs: Any, **kwargs: Any) -> Any:
    """The hidden states `[batch, seq_len, hidden_dim]` of a backbone call: the `"sequence_output"` of its dict.

    Any other callable (e.g. a model's all-position logits) gives its output as it is.
    """
    outputs = backbone(inputs, **kwargs)
    return outputs["sequence_output"] if isinstance(outputs, dict) else outputs


def assert_dropout_only_in_training(layer: Any, *args: Any, **kwargs: Any) -> None:
    """Two inference calls `layer(*args, **kwargs)` are equal; a call with `training=True` differs."""
    inference = [np.asarray(layer(*args, **kwargs)) for _ in range(2)]
    np.testing.assert_allclose(inference[0], inference[1])
    assert not np.allclose(layer(*args, **kwargs, training=True), inference[0])


def gradients(variables: list, loss_fn: Any) -> list[np.ndarray | None]:
    """The gradients of the scalar `loss_fn()` with respect to `variables`, as numpy arrays, on the current backend.

    TensorFlow records `loss_fn()` on a gradient tape (`None` for a variable
    the loss does not reach); JAX differentiates `loss_fn()` as a function
    of the variables' values, read through a `keras.StatelessScope` (zeros
    for a variable the loss does not reach).

    Args:
        variables: Keras variables, already built.
        loss_fn: a function of no arguments returning a scalar tensor.

    Returns:
        One array (or `None`) per variable, in order.
    """
    if keras.backend.backend() == "jax":
        import jax

        def loss_of(values: list) -> Any:
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return loss_fn()

        return [np.asarray(g) for g in jax.grad(loss_of)([v.value for v in variables])]
    with tf.GradientTape() as tape:
        loss = loss_fn()
    grads = tape.gradient(loss, [v.value for v in variables])
    return [None if g is None else np.asarray(tf.convert_to_tensor(g)) for g in grads]


def assert_gradients_reach_every_weight(variables: list, loss_fn: Any) -> None:
    """Every trainable variable gets a non-zero gradient from `loss_fn()`."""
    for variable, gradient in zip(variables, gradients(variables, loss_fn)):
        assert gradient is not None, f"no gradient for {variable.path}"
        assert np.any(gradient != 0), f"zero gradient for {variable.path}"


def assert_padding_invariant(backbone: Any, inputs: dict[str, Any], num_pad: int = 3, atol: float = 1e-5) -> None:
    """Left-padding every input with `num_pad` more zero slots leaves the hidden states of the real slots unchanged."""
    padded = {
        k: np.concatenate([np.zeros((np.shape(v)[0], num_pad), dtype=v.dtype), v], axis=1) for k, v in inputs.items()
    }
    real = np.asarray(inputs["item_ids"]) != 0
    np.testing.assert_allclose(
        np.asarray(sequence_output(backbone, padded))[:, num_pad:][real],
        np.asarray(sequence_output(backbone, inputs))[real],
        atol=atol,
    )


def assert_causal(backbone: Any, inputs: dict[str, Any], vocab_sizes: dict[str, int], atol: float = 1e-6) -> None:
    """Changing the inputs from slot `s` on never changes the hidden states before `s`, and changes those from `s`.

    Every key of `vocab_sizes` (the item ids and interaction features) is
    changed together: each real value moves to another id of its vocabulary.
    Only real slots are compared (padded query rows are never read).
    """
    before = np.asarray(sequence_output(backbone, inputs))
    real = np.asarray(inputs["item_ids"]) != 0
    for slot in range(1, real.shape[1]):
        changed = dict(inputs)
        for key, vocab_size in vocab_sizes.items():
            values = np.array(inputs[key])
            values[:, slot:] = np.where(values[:, slot:] == 0, 0, values[:, slot:] % (vocab_size - 1) + 1)
            changed[key] = values
        after = np.asarray(sequence_output(backbone, changed))
        np.testing.assert_allclose(after[:, :slot][real[:, :slot]], before[:, :slot][real[:, :slot]], atol=atol)
        assert not np.allclose(after[:, slot:], before[:, slot:]), f"changing slots {slot}.. changed nothing"


# --------------------------------------------------------------------------------------------------------------------
# Shared inputs and defaults
# --------------------------------------------------------------------------------------------------------------------

#: Two left-padded windows of six item ids: the first with two padded slots, the second full.
ITEM_IDS = np.array([[0, 0, 5, 7, 9, 3], [3, 4, 5, 6, 2, 8]], dtype="int32")

#: The real (non-padded) slots of `ITEM_IDS`. Causal query rows at padded slots have no allowed key: their outputs
#: are never read, and `score - 10000` rounds in float32, so attention outputs are compared at real slots only.
REAL = ITEM_IDS != 0

#: `SASRecBackbone`'s defaults: RecBole's SASRec hyper-parameters.
SASREC_DEFAULTS = {
    "max_len": 50,
    "hidden_dim": 64,
    "num_layers": 2,
    "num_heads": 2,
    "ff_dim": 256,
    "dropout": 0.5,
    "attention_dropout": 0.5,
    "layer_norm_epsilon": 1e-12,
}


#: Item id space of the side-feature fixtures below.
NUM_ITEMS = 20

#: Item features of the side-feature backbone tests: a multi-valued category and a single-valued brand.
ITEM_FEATURES = [
    {"name": "category", "vocab_size": 7, "max_values": 2},
    {"name": "brand", "vocab_size": 5, "max_values": 1},
]

#: One interaction feature, read from the inputs under its name.
INTERACTION_FEATURES = [{"name": "rating", "vocab_size": 6}]

#: Ids of the interaction feature at every slot of `ITEM_IDS` (0 at padded slots).
RATINGS = np.array([[0, 0, 2, 5, 3, 4], [4, 3, 2, 5, 5, 1]], dtype="int32")

#: The inputs of a side-feature backbone: `ITEM_IDS` with `RATINGS` under `"rating"`.
SIDE_INPUTS = {"item_ids": ITEM_IDS, "rating": RATINGS}

#: Tiny constructor arguments of a side-feature backbone over the fixtures above.
SIDE_INIT_KWARGS = {
    "num_items": NUM_ITEMS,
    "max_len": 10,
    "item_features": ITEM_FEATURES,
    "interaction_features": INTERACTION_FEATURES,
    "hidden_dim": 8,
    "num_layers": 2,
    "num_heads": 2,
    "ff_dim": 16,
}


def item_feature_tables(without_attributes: tuple[int, ...] = (0,)) -> dict[str, np.ndarray]:
    """Item id -> attribute ids tables of `ITEM_FEATURES`, `[NUM_ITEMS, max_values]`, the same at every call.

    Every item has a category and a brand, some a second category, except
    the items of `without_attributes` (the padding id 0 at least), whose rows
    are all zero.
    """
    rng = np.random.default_rng(0)
    categories = np.stack([rng.integers(2, 7, size=NUM_ITEMS), rng.integers(0, 7, size=NUM_ITEMS)], axis=1)
    tables = {"category": categories, "brand": rng.integers(2, 5, size=(NUM_ITEMS, 1))}
    for table in tables.values():
        table[list(without_attributes)] = 0
    return tables


def side_feature_batches(feature: str = "rating") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Training data of a side-feature backbone, the same at every call.

    Eight random windows of six items of `NUM_ITEMS` (four with two padded
    slots), a random interaction id in `[2, 6)` per real slot under
    `feature`, and the next item of every real slot as label (0 at padding).

    Returns:
        `(inputs, labels)`: dict of int32 `[8, 6]` arrays, int32 `[8, 6]`.
    """
    rng = np.random.default_rng(3)
    item_ids = rng.integers(2, NUM_ITEMS, size=(8, 6)).astype("int32")
    item_ids[:4, :2] = 0
    values = np.where(item_ids == 0, 0, rng.integers(2, 6, size=item_ids.shape)).astype("int32")
    labels = np.concatenate([item_ids[:, 1:], rng.integers(2, NUM_ITEMS, size=(8, 1))], axis=1)
    labels = np.where(item_ids == 0, 0, labels).astype("int32")
    return {"item_ids": item_ids, feature: values}, labels


def assert_fit_trains(
    model: keras.Model,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray,
    watched: list | tuple = (),
    batch_size: int = 4,
    any_change: bool = False,
) -> None:
    """Fits the compiled `model` three epochs on `(inputs, labels)` in order; the loss must stay finite and decrease.

    Every variable of `watched` must change: beyond `np.allclose`, or by any
    amount with `any_change` (small steps on small tables).
    """
    before = [np.array(variable) for variable in watched]
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(batch_size)
    losses = model.fit(dataset, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    for value, variable in zip(before, watched):
        after = np.array(variable)
        assert np.any(value != after) if any_change else not np.allclose(value, after), variable.path


def assert_item_feature_tables(backbone: Any, tables: dict[str, np.ndarray]) -> None:
    """Asserts that `backbone.side_information_embedding` holds the item table of every feature in `tables`."""
    side = backbone.side_information_embedding
    assert [feature["name"] for feature in side.item_features] == list(tables)
    for feature, lookup in zip(side.item_features, side.item_feature_lookups):
        np.testing.assert_array_equal(lookup.table, tables[feature["name"]])


def hidden_inputs(width: int = 8, seed: int = 0) -> np.ndarray:
    """float32 `N(0, 1)` inputs `[2, 6, width]`, one row per window of `ITEM_IDS`."""
    return np.random.default_rng(seed).normal(size=(2, 6, width)).astype("float32")


def randomize_weights(variables: list, seed: int = 1, scale: float = 0.5) -> None:
    """Assigns `scale * N(0, 1)` values to `variables`, in order, from one generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    for variable in variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32") * scale)


# --------------------------------------------------------------------------------------------------------------------
# Plain-numpy references (RecBole's equations, docs/models.md#transformer-block)
# --------------------------------------------------------------------------------------------------------------------


def np_dense(layer: keras.layers.Dense, x: np.ndarray) -> np.ndarray:
    return x @ np.asarray(layer.kernel) + np.asarray(layer.bias)


def np_layer_norm(layer: keras.layers.LayerNormalization, x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + layer.epsilon) * np.asarray(layer.gamma) + np.asarray(layer.beta)


def np_gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return x * 0.5 * (1.0 + erf(x / math.sqrt(2.0)))


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_self_attention(
    layer: Any,
    query_input: np.ndarray,
    mask: np.ndarray | None = None,
    key_input: np.ndarray | None = None,
    value_input: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`(output, probabilities)` of a `SelfAttention` layer, from its weights."""
    key_input = query_input if key_input is None else key_input
    value_input = key_input if value_input is None else value_input
    h, d = layer.num_heads, layer.hidden_dim

    def split(x: np.ndarray) -> np.ndarray:
        b, t, _ = x.shape
        return x.reshape(b, t, h, d // h).transpose(0, 2, 1, 3)

    q = split(np_dense(layer.query_dense, query_input))
    k = split(np_dense(layer.key_dense, key_input))
    v = split(np_dense(layer.value_dense, value_input))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // h)
    if mask is not None:
        scores = scores + (1.0 - mask[:, None, :, :].astype("float64")) * -10000.0
    probabilities = np_softmax(scores)
    b, _, t, _ = probabilities.shape
    context = (probabilities @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
    return np_dense(layer.output_dense, context), probabilities


def np_transformer_block(
    block: Any,
    x: np.ndarray,
    mask: np.ndarray | None = None,
    key_input: np.ndarray | None = None,
    value_input: np.ndarray | None = None,
) -> np.ndarray:
    """Output of a `TransformerBlock` at inference (no dropout), from its weights."""
    attended, _ = np_self_attention(block.self_attention, x, mask, key_input, value_input)
    hidden = np_layer_norm(block.attention_layer_norm, x + attended)
    feedforward = np_dense(
        block.feedforward_output_dense, np_gelu(np_dense(block.feedforward_intermediate_dense, hidden))
    )
    return np_layer_norm(block.feedforward_layer_norm, hidden + feedforward)


def np_attention_mask(item_ids: np.ndarray, causal: bool = True) -> np.ndarray:
    """`[batch, query, key]` bool mask written with loops, independent of the layer code."""
    b, t = item_ids.shape
    mask = np.zeros((b, t, t), dtype=bool)
    for n in range(b):
        for i in range(t):
            for j in range(t):
                mask[n, i, j] = item_ids[n, j] != 0 and (j <= i or not causal)
    return mask


def assert_old_config_key_loads(obj: Any, old_key: str, new_key: str) -> Any:
    """A config saved under an argument's former name builds the same object, directly and through Keras.

    Args:
        obj: a built layer or model whose config holds `new_key`.
        old_key: the name the argument had in an older version.
        new_key: its current name.

    Returns:
        The object restored from the old config.
    """
    config = obj.get_config()
    old_config = {(old_key if key == new_key else key): value for key, value in config.items()}
    assert new_key not in old_config and old_config[old_key] == config[new_key]
    restored = type(obj).from_config(old_config)
    assert restored.get_config() == config
    # The same through Keras deserialization, as when a saved model is loaded.
    serialized = keras.saving.serialize_keras_object(obj)
    serialized["config"] = old_config
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config
    return restored
