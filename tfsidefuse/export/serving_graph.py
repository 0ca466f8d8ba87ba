"""The serving functions of an exported model: raw ids in, raw ids out.

Every function maps a request to the model's encoded, left-padded inputs the
same way, then calls the trained :class:`~tfsidefuse.models.NextItemModel`:

1. Raw tokens become ids through the prepared dataset's vocabularies (baked in
   as lookup tables initialised from asset files): unknown tokens get the OOV
   id 1; the empty string ``""`` (and ``"[PAD]"``) is padding.
   Bucketized features map numbers to bucket ids with the schema's
   boundaries (a NaN is unknown).
2. Padding may appear anywhere in a row (clients usually pad on the right):
   the real events of each row are kept in order, the most recent
   ``max_len`` of them, and the row is left-padded as the model expects.
3. A row without any event gets the most popular training items (scores:
   training-event counts) instead of a model prediction, so that one empty
   request cannot fail the other requests it is batched with.

A request the graph cannot serve fails with ``InvalidArgumentError`` whose
message names the input and what it must be: an input of another rank than
its signature's (``input `item_ids` must be a 2-D string tensor [batch, events],
got shape [3]``), an interaction feature of another shape than ``item_ids``,
a ``predict_examples`` record that is not a serialized ``tf.train.SequenceExample``
(the message names the record, ``examples[i]``). Servers check neither ranks
nor shapes against the signature, so these checks run in the graph, before
anything uses the inputs. A wrong dtype never reaches the graph: TensorFlow
rejects it by argument position.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfsidefuse.data.prepared import ITEM_ID, VOCAB_DIR, PreparedDataset
from tfsidefuse.data.schema import NUM_RESERVED_IDS, OOV_ID, OOV_TOKEN, PAD_ID, FeatureSpec

#: Model (and request) key of the item sequence.
ITEM_IDS = "item_ids"
#: Request key of the serialized ``SequenceExample`` records of ``predict_examples``.
EXAMPLES = "examples"
#: Signature names.
SERVING_DEFAULT = "serving_default"
PREDICT_EXAMPLES = "predict_examples"
USER_EMBEDDING = "user_embedding"
ITEM_EMBEDDINGS = "item_embeddings"
SIGNATURES = (SERVING_DEFAULT, PREDICT_EXAMPLES, USER_EMBEDDING, ITEM_EMBEDDINGS)
#: The dimensions of the inputs, as the messages of bad requests name them.
RAW_LAYOUT = "[batch, events]"
EXAMPLES_LAYOUT = "[batch] of serialized tf.train.SequenceExample records"
ITEMS_LAYOUT = "[n] of raw item ids"


def model_interaction_features(model, schema) -> list[FeatureSpec]:
    """The schema's interaction-level features that the model's backbone reads.

    Backbones that read side features take them as the constructor argument
    ``interaction_features`` (a list of dicts with a ``name``), stored under
    the same name; id-only backbones read none.
    """
    declared = getattr(model.backbone, "interaction_features", None) or ()
    names = [f["name"] if isinstance(f, dict) else getattr(f, "name", f) for f in declared]
    return [schema.feature(name) for name in names]


def _shape_text(value: tf.Tensor) -> tf.Tensor:
    """The run-time shape of `value` as text, e.g. ``[2, 7]``."""
    dims = tf.strings.reduce_join(tf.strings.as_string(tf.shape(value)), separator=", ")
    return tf.strings.join(["[", dims, "]"])


def _run_time_rank(value: tf.Tensor) -> tf.Tensor:
    """The rank of `value` as fed, even where its static shape claims one.

    `tf.rank` (at trace time) and grappler's constant folding (at run time)
    both replace a rank by the static one of the signature; the number of
    entries of the shape vector is computed from its values, which neither knows.
    """
    return tf.reduce_sum(tf.cast(tf.greater_equal(tf.shape(value), 0), tf.int32))


def _token_table(path: str, default: int = OOV_ID) -> tf.lookup.StaticHashTable:
    """token (a line of `path`) -> line number."""
    init = tf.lookup.TextFileInitializer(
        path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER
    )
    return tf.lookup.StaticHashTable(init, default_value=default)


def _id_table(path: str) -> tf.lookup.StaticHashTable:
    """line number -> token (a line of `path`)."""
    init = tf.lookup.TextFileInitializer(
        path, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE
    )
    return tf.lookup.StaticHashTable(init, default_value=OOV_TOKEN)


class ServingGraph:
    """Builds the exported signatures of a trained next-item model.

    Args:
        model: a trained `NextItemModel` (its `exclude_history` flag decides
            whether items of the request are recommended).
        prepared: the model's prepared dataset (vocabularies, schema).
        k: number of items returned per request.
        popularity: training-event count of every item id (`[num_items]`),
            the fallback ranking of empty requests.
    """

    def __init__(self, model, prepared: PreparedDataset, k: int, popularity: np.ndarray) -> None:
        self.model = model
        self.schema = prepared.schema
        self.num_items = int(model.backbone.num_items)
        self.max_len = int(model.backbone.max_len)
        if self.num_items != self.schema.num_items:
            raise ValueError(
                f"the model scores {self.num_items} item ids but the prepared dataset {prepared.directory} has "
                f"{self.schema.num_items}; export with the dataset the model was trained on"
            )
        real_items = self.num_items - NUM_RESERVED_IDS
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= real_items:
            raise ValueError(f"k must be an int in [1, {real_items}] (the number of items), got {k!r}")
        self.k = k
        self.features = model_interaction_features(model, self.schema)
        vocab = os.path.join(prepared.directory, VOCAB_DIR)
        self.item_lookup = _token_table(os.path.join(vocab, f"{ITEM_ID}.txt"))
        self.item_tokens = _id_table(os.path.join(vocab, f"{ITEM_ID}.txt"))
        self.feature_lookups = {
            f.name: _token_table(os.path.join(vocab, f"{f.name}.txt")) for f in self.features if f.kind != "bucketized"
        }
        popularity = np.asarray(popularity, dtype=np.float64).copy()
        popularity[:NUM_RESERVED_IDS] = -1.0
        # Stable sort: equally popular items in id order, as the most-popular baseline.
        order = np.argsort(-popularity, kind="stable")[:k]
        self.popular_ids = tf.constant(order.astype(np.int32))
        self.popular_scores = tf.constant(popularity[order].astype(np.float32))

    # ------------------------------------------------------------------ signatures

    def tables(self) -> list:
        return [self.item_lookup, self.item_tokens, *self.feature_lookups.values()]

    def raw_input_signature(self) -> dict[str, tf.TensorSpec]:
        """Request tensors of `serving_default` and `user_embedding`, `[batch, events]` each."""
        spec = {ITEM_IDS: tf.TensorSpec([None, None], tf.string, name=ITEM_IDS)}
        for f in self.features:
            dtype = tf.float64 if f.kind == "bucketized" else tf.string
            spec[f.name] = tf.TensorSpec([None, None], dtype, name=f.name)
        return spec

    def examples_input_signature(self) -> dict[str, tf.TensorSpec]:
        return {EXAMPLES: tf.TensorSpec([None], tf.string, name=EXAMPLES)}

    def item_input_signature(self) -> dict[str, tf.TensorSpec]:
        return {ITEM_IDS: tf.TensorSpec([None], tf.string, name=ITEM_IDS)}

    def scores_by_dot_product(self) -> bool:
        """Whether the model's scores are `last hidden state @ item_table().T` (the plain next-item task).

        Tasks that score another representation (a Cloze model's appended
        `[MASK]` slot and output head) export no embedding signatures: their
        embeddings would not reproduce the model's scores.
        """
        from tfsidefuse.models.next_item_model import NextItemModel

        cls = type(self.model)
        return all(
            getattr(cls, name, None) is getattr(NextItemModel, name, None)
            for name in ("call", "_logits", "top_k", "scoring_vectors", "item_bias", "score_items")
        )

    def endpoints(self) -> dict[str, tuple]:
        """Signature name -> (function of one dict, its input signature)."""
        out = {
            SERVING_DEFAULT: (self.recommend, self.raw_input_signature()),
            PREDICT_EXAMPLES: (self.recommend_examples, self.examples_input_signature()),
        }
        if self.scores_by_dot_product():
            out[USER_EMBEDDING] = (self.user_embedding, self.raw_input_signature())
            out[ITEM_EMBEDDINGS] = (self.item_embeddings, self.item_input_signature())
        return out

    @staticmethod
    def checked(request: dict, signature: dict, layout: str) -> dict:
        """The request with the rank of every input checked at run time, before anything uses it.

        Servers feed tensors without checking them against the signature's
        shapes. A wrong rank fails with InvalidArgument naming the input, its
        expected rank and dtype, `layout` (the meaning of its dimensions) and the
        shape it got; `EnsureShape` backs the check up.
        """
        out = {}
        for name, spec in signature.items():
            value = request[name]
            ok = tf.equal(_run_time_rank(value), spec.shape.rank)
            message = tf.strings.join(
                [
                    f"input `{name}` must be a {spec.shape.rank}-D {spec.dtype.name} tensor {layout}, got shape ",
                    _shape_text(value),
                ]
            )
            check = tf.debugging.Assert(ok, [message], name=f"check_rank_{name}")
            with tf.control_dependencies([check]):
                value = tf.identity(value)
            out[name] = tf.ensure_shape(value, spec.shape, name=f"check_input_{name}")
        return out

    def recommend(self, request: dict) -> dict:
        """Top-`k` item ids (strings) and scores of raw requests."""
        request = self.checked(request, self.raw_input_signature(), RAW_LAYOUT)
        ids, features = self.left_align(*self.encode_raw(request))
        return self._top_k(ids, features)

    def recommend_examples(self, request: dict) -> dict:
        """Top-`k` of serialized `SequenceExample` records (every event of a record is history)."""
        request = self.checked(request, self.examples_input_signature(), EXAMPLES_LAYOUT)
        ids, features = self.left_align(*self.parse_examples(request[EXAMPLES]))
        return self._top_k(ids, features)

    def user_embedding(self, request: dict) -> dict:
        """The sequence representation that scores items: the hidden state of the last slot.

        `embedding @ item_embeddings.T` are the model's logits. Empty requests get zeros.
        """
        request = self.checked(request, self.raw_input_signature(), RAW_LAYOUT)
        ids, features = self.left_align(*self.encode_raw(request))
        hidden = self.model.backbone({ITEM_IDS: ids, **features}, training=False)["sequence_output"][:, -1, :]
        hidden = tf.cast(hidden, tf.float32)
        empty = tf.reduce_all(tf.equal(ids, PAD_ID), axis=1, keepdims=True)
        return {"embedding": tf.where(empty, tf.zeros_like(hidden), hidden)}

    def item_embeddings(self, request: dict) -> dict:
        """Rows of the item table that hidden states are scored against, by raw item id.

        Unknown ids get the OOV row and `known` false.
        """
        request = self.checked(request, self.item_input_signature(), ITEMS_LAYOUT)
        ids = self.item_lookup.lookup(request[ITEM_IDS])
        table = tf.cast(self.model.backbone.item_table(), tf.float32)
        return {"embeddings": tf.gather(table, ids), "known": tf.greater_equal(ids, NUM_RESERVED_IDS)}

    # ------------------------------------------------------------------ encoding

    def encode_raw(self, request: dict) -> tuple[tf.Tensor, dict]:
        """Raw tokens / numbers -> int32 ids, same layout as the request."""
        tokens = request[ITEM_IDS]
        ids = self.item_lookup.lookup(tokens)
        ids = tf.where(tf.equal(tokens, ""), tf.constant(PAD_ID, tf.int64), ids)
        features = {}
        for f in self.features:
            value = self._same_shape(request[f.name], tokens, f"input `{f.name}`", f"`{ITEM_IDS}`")
            if f.kind == "bucketized":
                features[f.name] = self._bucketize(value, f)
            else:
                features[f.name] = tf.cast(self.feature_lookups[f.name].lookup(value), tf.int32)
        return tf.cast(ids, tf.int32), features

    @staticmethod
    def _same_shape(value: tf.Tensor, reference: tf.Tensor, what: str, reference_name: str) -> tf.Tensor:
        """`value`, once checked (at run time) to have the shape of `reference`: one value per event."""
        ok = tf.reduce_all(tf.equal(tf.shape(value), tf.shape(reference)))
        message = tf.strings.join(
            [
                f"{what} must have the same shape as {reference_name} (one value per event): ",
                _shape_text(reference),
                ", got ",
                _shape_text(value),
            ]
        )
        check = tf.debugging.Assert(ok, [message])
        with tf.control_dependencies([check]):
            return tf.identity(value)

    @staticmethod
    def _bucketize(values: tf.Tensor, spec: FeatureSpec) -> tf.Tensor:
        """`2 + #{b in boundaries: b <= v}`, OOV for NaN, as the data layer encodes them."""
        boundaries = tf.constant([spec.boundaries], tf.float64)
        flat = tf.reshape(values, [1, -1])
        buckets = tf.searchsorted(boundaries, flat, side="right", out_type=tf.int32) + NUM_RESERVED_IDS
        buckets = tf.reshape(buckets, tf.shape(values))
        return tf.where(tf.math.is_nan(values), tf.constant(OOV_ID, tf.int32), buckets)

    def parse_examples(self, serialized: tf.Tensor) -> tuple[tf.Tensor, dict]:
        """Serialized `SequenceExample` records (the data layer's format) -> int32 ids, right-padded."""
        spec = {ITEM_ID: tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)}
        for f in self.features:
            spec[f.name] = tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)
        # The parser names a record it cannot parse by its example name: its place, and what it must be.
        places = tf.strings.join([f"{EXAMPLES}[", tf.strings.as_string(tf.range(tf.size(serialized))), "]"])
        names = tf.strings.join([places, f" (`{EXAMPLES}` must hold serialized tf.train.SequenceExample records)"])
        _, lists, lengths = tf.io.parse_sequence_example(serialized, sequence_features=spec, example_names=names)
        checks = []
        for f in self.features:
            bad = tf.not_equal(lengths[f.name], lengths[ITEM_ID])
            message = tf.strings.join(
                [
                    f"feature list `{f.name}` must have one value per `{ITEM_ID}` in every record; "
                    "records that do not: ",
                    tf.strings.reduce_join(tf.boolean_mask(places, bad), separator=", "),
                ]
            )
            checks.append(tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message]))
        with tf.control_dependencies(checks):
            lists = {name: tf.identity(value) for name, value in lists.items()}
        ids = self._in_range(lists[ITEM_ID], self.num_items)
        features = {f.name: self._in_range(lists[f.name], f.vocab_size) for f in self.features}
        return ids, features

    @staticmethod
    def _in_range(ids: tf.Tensor, size: int) -> tf.Tensor:
        """Ids outside `[0, size)` become OOV (an out-of-range gather is an error on CPU)."""
        ids = tf.cast(ids, tf.int64)
        ok = tf.logical_and(ids >= 0, ids < size)
        return tf.cast(tf.where(ok, ids, tf.constant(OOV_ID, tf.int64)), tf.int32)

    def left_align(self, ids: tf.Tensor, features: dict) -> tuple[tf.Tensor, dict]:
        """Drops padding anywhere, keeps the most recent `max_len` events, left-pads every row.

        The width is the longest kept row (at least 1), as the training pipeline batches.
        """
        keep = tf.not_equal(ids, PAD_ID)

        def align(x):
            rows = tf.ragged.boolean_mask(x, keep)[:, -self.max_len :]
            dense = tf.reverse(tf.reverse(rows, axis=[1]).to_tensor(default_value=0), axis=[1])
            return tf.pad(dense, [[0, 0], [tf.maximum(1 - tf.shape(dense)[1], 0), 0]])

        return align(ids), {name: align(value) for name, value in features.items()}

    def _top_k(self, ids: tf.Tensor, features: dict) -> dict:
        scores, top = self.model.top_k({ITEM_IDS: ids, **features}, k=self.k)
        scores = tf.cast(scores, tf.float32)
        top = tf.cast(top, tf.int32)
        empty = tf.reduce_all(tf.equal(ids, PAD_ID), axis=1, keepdims=True)
        top = tf.where(empty, self.popular_ids[tf.newaxis, :], top)
        scores = tf.where(empty, self.popular_scores[tf.newaxis, :], scores)
        return {ITEM_IDS: self.item_tokens.lookup(tf.cast(top, tf.int64)), "scores": scores}
