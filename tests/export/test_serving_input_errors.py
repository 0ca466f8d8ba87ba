"""Bad requests to an exported model: errors that name the input and what it must be, and the documented fallbacks.

Every call goes through the SavedModel as ``tf.saved_model.load`` restores it (no project code runs),
on the session's export of the tiny trained ``sasrec_f`` (interaction feature ``action``).
"""

import re

import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import MAX_LEN, K, reference_top_k

from tfsidefuse.data.prepared import ITEM_ID

MODEL = "sasrec_f"
BAD_REQUEST = tf.errors.InvalidArgumentError


@pytest.fixture(scope="module")
def loaded(zoo):
    return tf.saved_model.load(zoo.export(MODEL))


@pytest.fixture(scope="module")
def items(zoo) -> list[str]:
    """Real raw item ids of the export's vocabulary."""
    return zoo.prepared.vocabulary(ITEM_ID)[2:]


def _raw(item_ids, action) -> dict:
    return {"item_ids": tf.constant(item_ids, tf.string), "action": tf.constant(action, tf.string)}


def _strings(tensor) -> np.ndarray:
    return np.vectorize(bytes.decode, otypes=[object])(tensor.numpy())


def _sequence_example(item_ids: list[int], action: list[int], item_kind: str = "int64_list") -> bytes:
    """A record as the prepared dataset stores them: feature lists of encoded ids."""
    example = tf.train.SequenceExample()
    lists = example.feature_lists.feature_list
    for value in item_ids:
        getattr(lists[ITEM_ID].feature.add(), item_kind).value.append(value)
    for value in action:
        lists["action"].feature.add().int64_list.value.append(value)
    return example.SerializeToString()


def _popular(zoo, rows: int) -> dict:
    """What the export answers to `rows` requests without any event: the most popular training items."""
    _, model = zoo.run(MODEL)
    empty = {"item_ids": np.zeros((rows, 1), "int32"), "action": np.zeros((rows, 1), "int32")}
    return reference_top_k(model, zoo.prepared, empty)


# ----------------------------------------------------------------------------- ranks


@pytest.mark.parametrize("signature", ["serving_default", "user_embedding"])
@pytest.mark.parametrize(
    ("item_ids", "shape"),
    [(["i3", "i5", "i7"], "[3]"), ([[["i3"], ["i5"]]], "[1, 2, 1]"), ("i3", "[]")],
    ids=["1-D", "3-D", "scalar"],
)
def test_item_ids_of_another_rank_name_the_input_its_layout_and_the_shape_sent(loaded, signature, item_ids, shape):
    action = tf.fill(tf.shape(tf.constant(item_ids)), "view")
    message = f"input `item_ids` must be a 2-D string tensor [batch, events], got shape {shape}"
    with pytest.raises(BAD_REQUEST, match=re.escape(message)):
        loaded.signatures[signature](item_ids=tf.constant(item_ids), action=action)


def test_a_feature_of_another_rank_names_the_feature(loaded):
    with pytest.raises(BAD_REQUEST, match=re.escape("input `action` must be a 2-D string tensor [batch, events]")):
        loaded.signatures["serving_default"](item_ids=tf.constant([["i3", "i5"]]), action=tf.constant(["view", "buy"]))


def test_examples_of_another_rank_name_the_input_and_the_records_it_holds(loaded):
    message = (
        "input `examples` must be a 1-D string tensor [batch] of serialized tf.train.SequenceExample records, "
        "got shape [1, 2]"
    )
    with pytest.raises(BAD_REQUEST, match=re.escape(message)):
        loaded.signatures["predict_examples"](examples=tf.constant([[b"", b""]]))


def test_item_embeddings_of_another_rank_name_the_input(loaded):
    message = "input `item_ids` must be a 1-D string tensor [n] of raw item ids, got shape [2, 1]"
    with pytest.raises(BAD_REQUEST, match=re.escape(message)):
        loaded.signatures["item_embeddings"](item_ids=tf.constant([["i3"], ["i5"]]))


# ----------------------------------------------------------------------------- shapes and dtypes


@pytest.mark.parametrize("signature", ["serving_default", "user_embedding"])
@pytest.mark.parametrize(
    ("item_ids", "action", "shapes"),
    [
        ([["i3", "i5"]], [["view"]], "[1, 2], got [1, 1]"),
        ([["i3", "i5"]], [["view", "buy"], ["view", "buy"]], "[1, 2], got [2, 2]"),
        ([["i3", "i5"]], [["view", "buy", "cart"]], "[1, 2], got [1, 3]"),
    ],
    ids=["fewer-events", "other-batch", "more-events"],
)
def test_a_feature_of_another_shape_than_item_ids_names_both_shapes(loaded, signature, item_ids, action, shapes):
    message = f"input `action` must have the same shape as `item_ids` (one value per event): {shapes}"
    with pytest.raises(BAD_REQUEST, match=re.escape(message)):
        loaded.signatures[signature](**_raw(item_ids, action))


def test_a_wrong_dtype_is_rejected_before_the_graph_by_argument_position(loaded):
    """TensorFlow checks dtypes before the graph runs: the message gives the expected and the sent dtype.

    It names the argument by its position (the signature's inputs sorted by name: 0 `action`, 1 `item_ids`),
    which no check inside the graph can change.
    """
    fn = loaded.signatures["serving_default"]
    with pytest.raises(BAD_REQUEST, match=r"input #1\(zero-based\) was expected to be a string tensor but is a int32"):
        fn(item_ids=tf.constant([[3, 5]]), action=tf.constant([["view", "buy"]]))
    with pytest.raises(BAD_REQUEST, match=r"input #0\(zero-based\) was expected to be a string tensor but is a float"):
        fn(item_ids=tf.constant([["i3", "i5"]]), action=tf.constant([[1.0, 2.0]]))


def test_a_missing_input_is_named(loaded):
    with pytest.raises(TypeError, match="missing a required argument: 'action'"):
        loaded.signatures["serving_default"](item_ids=tf.constant([["i3", "i5"]]))


# ----------------------------------------------------------------------------- predict_examples records


def test_bytes_that_are_not_a_sequence_example_name_the_record_and_the_format(loaded):
    valid = _sequence_example([3, 4, 5], [2, 3, 2])
    message = "examples[1] (`examples` must hold serialized tf.train.SequenceExample records)"
    with pytest.raises(BAD_REQUEST, match=re.escape(message)):
        loaded.signatures["predict_examples"](examples=tf.constant([valid, b"\xff\x01 not a record"]))


def test_a_feature_list_of_another_type_names_the_record_and_the_list(loaded):
    record = _sequence_example([3, 4], [2, 3], item_kind="float_list")
    message = "examples[0] (`examples` must hold serialized tf.train.SequenceExample records), Feature list: item_id"
    with pytest.raises(BAD_REQUEST, match=re.escape(message)):
        loaded.signatures["predict_examples"](examples=tf.constant([record]))


def test_a_feature_list_of_another_length_names_the_list_and_the_records(loaded):
    records = [
        _sequence_example([3, 4, 5], [2, 3, 2]),
        _sequence_example([3, 4, 5], [2, 3]),
        _sequence_example([3], []),
    ]
    message = (
        "feature list `action` must have one value per `item_id` in every record; "
        "records that do not: examples[1], examples[2]"
    )
    with pytest.raises(BAD_REQUEST, match=re.escape(message)):
        loaded.signatures["predict_examples"](examples=tf.constant(records))


# ----------------------------------------------------------------------------- documented fallbacks


def test_rows_without_events_get_the_most_popular_items_and_leave_the_batch_alone(zoo, loaded, items):
    """Zero events, only padding ("" or "[PAD]"), an empty record: the popularity fallback, not an error."""
    fn = loaded.signatures["serving_default"]
    popular = _popular(zoo, 1)
    for width in (0, 4):
        got = fn(**_raw(np.full((2, width), ""), np.full((2, width), "")))
        np.testing.assert_array_equal(_strings(got["item_ids"]), np.repeat(popular["item_ids"], 2, axis=0))
        np.testing.assert_allclose(got["scores"].numpy(), np.repeat(popular["scores"], 2, axis=0))
    history = items[:3] + ["[PAD]"]
    alone = fn(**_raw([history], [["view", "cart", "view", ""]]))
    mixed = fn(**_raw([["", "[PAD]", "", ""], history], [["", "", "", ""], ["view", "cart", "view", ""]]))
    np.testing.assert_array_equal(_strings(mixed["item_ids"])[0], popular["item_ids"][0])
    np.testing.assert_array_equal(mixed["item_ids"].numpy()[1], alone["item_ids"].numpy()[0])
    np.testing.assert_allclose(mixed["scores"].numpy()[1], alone["scores"].numpy()[0], rtol=1e-5, atol=1e-6)
    embedding = loaded.signatures["user_embedding"](**_raw([["", ""], items[:2]], [["", ""], ["view", "buy"]]))
    assert not embedding["embedding"].numpy()[0].any() and embedding["embedding"].numpy()[1].any()
    examples = loaded.signatures["predict_examples"](examples=tf.constant([b""]))
    np.testing.assert_array_equal(_strings(examples["item_ids"]), popular["item_ids"])


def test_an_empty_batch_gets_an_empty_answer(loaded):
    got = loaded.signatures["serving_default"](**_raw(np.full((0, 3), ""), np.full((0, 3), "")))
    assert got["item_ids"].shape == got["scores"].shape == (0, K)
    assert loaded.signatures["predict_examples"](examples=tf.constant([], tf.string))["scores"].shape == (0, K)


def test_rows_longer_than_max_len_keep_their_most_recent_max_len_events(loaded, items):
    fn = loaded.signatures["serving_default"]
    recent = [items[i % len(items)] for i in range(MAX_LEN)]
    older = [items[(7 * i + 3) % len(items)] for i in range(2 * MAX_LEN)]
    actions = ["view", "cart", "buy"]
    long_rows = _raw(
        [older + recent, list(reversed(older)) + recent],
        [[actions[i % 3] for i in range(3 * MAX_LEN)], [actions[(i + 1) % 3] for i in range(3 * MAX_LEN)]],
    )
    short = _raw([recent], [[actions[i % 3] for i in range(2 * MAX_LEN, 3 * MAX_LEN)]])
    got, want = fn(**long_rows), fn(**short)
    np.testing.assert_array_equal(got["item_ids"].numpy()[0], want["item_ids"].numpy()[0])
    np.testing.assert_allclose(got["scores"].numpy()[0], want["scores"].numpy()[0], rtol=1e-5, atol=1e-6)
    # Only the events before the last MAX_LEN differ between the rows (and actions are shifted): the
    # second row's answer is that of its own last MAX_LEN events.
    shifted = _raw([recent], [[actions[(i + 1) % 3] for i in range(2 * MAX_LEN, 3 * MAX_LEN)]])
    np.testing.assert_array_equal(got["item_ids"].numpy()[1], fn(**shifted)["item_ids"].numpy()[0])
