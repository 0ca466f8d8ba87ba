"""Raw histories to model inputs and model ids to raw item ids, in Python, as an exported SavedModel does it.

A :class:`InputEncoder` holds the vocabularies and bucket boundaries of a prepared dataset (or of an export) and
applies the lookup that the SavedModel's raw signatures (``serving_default``, ``user_embedding``) carry in their
graph, with numpy only, so it works under every Keras backend and on machines without TensorFlow:

1. raw item ids and categorical feature values become ids through the vocabularies (line ``i`` of
   ``vocab/<name>.txt`` is id ``i``); an unknown value gets the OOV id 1, the documented fallback; an item id
   ``""`` or ``"[PAD]"`` is padding;
2. a bucketized feature maps a number ``v`` to ``2 + #{b in boundaries: b <= v}``, NaN to the OOV id;
3. padding may appear anywhere in a row: the real events keep their order, the most recent ``max_len`` of them
   are kept, and every row is left-padded with 0 to the longest kept row (at least 1), as the model expects.

Requests are dicts keyed as the SavedModel's inputs: ``item_ids`` (a batch of histories, oldest event first) and
one entry per interaction feature the model reads, one value per event. Rows may have different lengths.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfsidefuse.data.schema import NUM_RESERVED_IDS, OOV_ID, OOV_TOKEN, PAD_ID, PAD_TOKEN, DatasetSchema, FeatureSpec
from tfsidefuse.errors import UserError

#: Key of the item histories in requests and model inputs.
ITEM_IDS = "item_ids"
#: The vocabulary of item ids (in a prepared dataset's ``vocab/`` and an export's ``assets/``).
ITEM_VOCABULARY = "item_id"
VOCAB_DIR = "vocab"
SCHEMA_FILE = "schema.yaml"
EXPORT_INFO = os.path.join("assets.extra", "export_info.json")
EXPORT_ASSETS = "assets"


class RequestError(UserError, ValueError):
    """A raw request cannot be encoded: a missing or unknown input, a wrong type, a shape mismatch, no event."""


def model_feature_names(model: Any) -> list[str]:
    """Names of the interaction features a model's backbone reads (its ``interaction_features`` argument)."""
    declared = getattr(getattr(model, "backbone", None), "interaction_features", None) or ()
    return [f["name"] if isinstance(f, dict) else getattr(f, "name", f) for f in declared]


def read_vocabulary(path: str) -> list[str]:
    """Tokens of a vocabulary file, index = id, split as TensorFlow's text-file lookup tables split it.

    Lines end with ``"\\n"`` (a ``"\\r"`` before it is dropped); other line breaks such as ``"\\x1c"`` are part
    of a token, which ``str.splitlines`` would break apart.
    """
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ...]"


class InputEncoder:
    """Maps raw histories to a model's int inputs, and model ids back to raw item ids.

    The lookup is the one an exported SavedModel runs on its raw inputs (see the module docstring), so
    ``model.top_k(encoder.encode(request))`` ranks what the SavedModel's ``serving_default`` ranks for the same
    ``request``, and :meth:`recommend` returns the same raw item ids.

    Build one with :meth:`from_prepared` (a prepared dataset, optionally the model it trained) or
    :meth:`from_saved_model` (an export directory).

    Args:
        item_vocabulary: raw item ids, index = item id (``[PAD]``, ``[OOV]``, then the items).
        features: the interaction features the requests carry (categorical or bucketized), in model order.
        vocabularies: feature name -> tokens (index = id), for each categorical feature.
        max_len: the number of most recent events kept per row.

    Example:

    ```python
    encoder = tfsidefuse.InputEncoder.from_prepared(prepared, model=model)
    request = {"item_ids": [["i3", "i7", "i9"], ["i4"]], "action": [["view", "buy", "view"], ["view"]]}
    inputs = encoder.encode(request)              # {"item_ids": int32 [2, 3], "action": int32 [2, 3]}
    item_ids, scores = encoder.recommend(model, request, k=10)   # raw item ids [2, 10], best first
    ```
    """

    def __init__(
        self,
        item_vocabulary: Sequence[str],
        features: Sequence[FeatureSpec] = (),
        vocabularies: Mapping[str, Sequence[str]] | None = None,
        max_len: int = 50,
    ) -> None:
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        self.item_vocabulary = [str(t) for t in item_vocabulary]
        if len(self.item_vocabulary) < NUM_RESERVED_IDS:
            raise ValueError(
                f"item_vocabulary must start with {PAD_TOKEN!r} and {OOV_TOKEN!r}, got {len(self.item_vocabulary)} "
                "token(s)"
            )
        vocabularies = dict(vocabularies or {})
        self.features = list(features)
        self.max_len = max_len
        self._item_index = {t: i for i, t in enumerate(self.item_vocabulary)}
        self._item_tokens = np.array(self.item_vocabulary, dtype=object)
        self._indexes: dict[str, dict[str, int]] = {}
        self._boundaries: dict[str, np.ndarray] = {}
        for f in self.features:
            if f.level != "interaction" or f.kind not in ("categorical", "bucketized"):
                raise ValueError(
                    f"feature {f.name!r}: requests carry interaction-level categorical or bucketized features, "
                    f"got level={f.level!r} kind={f.kind!r}"
                )
            if f.kind == "bucketized":
                if f.boundaries is None:
                    raise ValueError(f"feature {f.name!r}: a bucketized feature needs its boundaries")
                self._boundaries[f.name] = np.asarray(f.boundaries, dtype=np.float64)
            elif f.name not in vocabularies:
                raise ValueError(f"feature {f.name!r}: no vocabulary given; vocabularies has {sorted(vocabularies)}")
            else:
                self._indexes[f.name] = {t: i for i, t in enumerate(vocabularies[f.name])}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_prepared(
        cls,
        prepared: Any,
        *,
        model: Any = None,
        features: Sequence[str] | None = None,
        max_len: int | None = None,
    ) -> InputEncoder:
        """The encoder of a prepared dataset: its vocabularies, bucket boundaries and ``max_len``.

        Args:
            prepared: a :class:`~tfsidefuse.PreparedDataset` or its directory (a directory's files are checked
                against its manifest first, as ``PreparedDataset.open`` does; TensorFlow is not needed).
            model: the model that will get the inputs: its interaction features and ``max_len`` are used,
                and its item count is checked against the vocabulary.
            features: without a model, the interaction features to encode (default: all of the schema's).
            max_len: without a model, the events kept per row (default: the schema's ``max_len``).
        """
        if isinstance(prepared, (str, os.PathLike)):
            directory = os.fspath(prepared)
            schema_path = os.path.join(directory, SCHEMA_FILE)
            if not os.path.exists(schema_path):
                raise FileNotFoundError(
                    f"not a prepared dataset (no {SCHEMA_FILE}): {directory}; run `tfsidefuse prepare` first"
                )
            from tfsidefuse.data.manifest import check_prepared

            check_prepared(directory)
            schema = DatasetSchema.load(schema_path)
        else:
            directory, schema = prepared.directory, prepared.schema
        if model is not None:
            if features is not None or max_len is not None:
                raise ValueError("pass either a model or features/max_len: the model decides both")
            names = model_feature_names(model)
            max_len = int(model.backbone.max_len)
        else:
            names = [f.name for f in schema.interaction_features] if features is None else list(features)
            max_len = schema.max_len if max_len is None else max_len
        specs = [schema.feature(name) for name in names]
        vocab_dir = os.path.join(directory, VOCAB_DIR)
        items = read_vocabulary(os.path.join(vocab_dir, f"{ITEM_VOCABULARY}.txt"))
        if model is not None and int(model.backbone.num_items) != len(items):
            raise ValueError(
                f"the model scores {int(model.backbone.num_items)} item ids but the prepared dataset {directory} has "
                f"{len(items)}; use the dataset the model was trained on"
            )
        vocabularies = {
            f.name: read_vocabulary(os.path.join(vocab_dir, f"{f.name}.txt")) for f in specs if f.kind != "bucketized"
        }
        return cls(items, specs, vocabularies, max_len)

    @classmethod
    def from_saved_model(cls, export_dir: str | os.PathLike) -> InputEncoder:
        """The encoder of an exported model version (``<base>/<version>/``): the vocabularies of its ``assets/``
        and the interaction features and ``max_len`` of ``assets.extra/export_info.json``.

        Bucketized features take their boundaries from ``export_info.json`` where it lists them, else from the
        schema of the prepared dataset the export names.
        """
        export_dir = os.fspath(export_dir)
        info_path = os.path.join(export_dir, EXPORT_INFO)
        if not os.path.exists(info_path):
            raise FileNotFoundError(f"not a tfsidefuse export (no {EXPORT_INFO}): {export_dir}")
        with open(info_path) as fh:
            info = json.load(fh)
        assets = os.path.join(export_dir, EXPORT_ASSETS)
        specs, vocabularies, schema = [], {}, None
        for entry in info.get("interaction_features", []):
            name, kind = entry["name"], entry["kind"]
            if kind == "bucketized":
                boundaries = entry.get("boundaries")
                if boundaries is None:
                    schema = schema or cls._export_schema(export_dir, info, name)
                    boundaries = schema.feature(name).boundaries
                specs.append(FeatureSpec(name, "interaction", kind, boundaries=list(boundaries)))
            else:
                specs.append(FeatureSpec(name, "interaction", kind))
                vocabularies[name] = read_vocabulary(os.path.join(assets, f"{name}.txt"))
        items = read_vocabulary(os.path.join(assets, f"{ITEM_VOCABULARY}.txt"))
        return cls(items, specs, vocabularies, int(info["max_len"]))

    @staticmethod
    def _export_schema(export_dir: str, info: dict, feature: str) -> DatasetSchema:
        path = os.path.join(info.get("prepared_dir") or "", SCHEMA_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"the export {export_dir} does not list the boundaries of the bucketized feature {feature!r}, and "
                f"the schema of the prepared dataset it names is not found ({path}); use "
                "InputEncoder.from_prepared with that prepared dataset"
            )
        return DatasetSchema.load(path)

    # ------------------------------------------------------------------ encoding

    @property
    def input_names(self) -> list[str]:
        """The keys of a request and of the encoded inputs: ``item_ids``, then the features."""
        return [ITEM_IDS, *(f.name for f in self.features)]

    def encode(self, request: Mapping[str, Any], *, allow_empty: bool = False) -> dict[str, np.ndarray]:
        """The model inputs of a batch of raw histories.

        Args:
            request: ``{"item_ids": rows, <feature>: rows, ...}``: one row per history, oldest event first; item
                ids and categorical values as strings, bucketized values as numbers (NaN: unknown); every feature
                row has one value per item id of its row (padding events included).
            allow_empty: encode a row without any event as a row of padding (what the SavedModel feeds its model
                before it answers such a row with the most popular items) instead of raising.

        Returns:
            ``{name: int32 [batch, width]}`` for every name of :attr:`input_names`, left-padded with 0; ``width``
            is the longest kept row (at most ``max_len``, at least 1).

        Raises:
            RequestError: a missing or unknown input, a value of the wrong type, rows of different counts or
                lengths between ``item_ids`` and a feature, a batch without rows, or (unless ``allow_empty``) a
                row without any event; the message names the input, the row and the value.
        """
        if not isinstance(request, Mapping):
            raise RequestError(
                f"a request must be a dict with the inputs {self.input_names}, got {type(request).__name__} "
                f"{_short(request)}"
            )
        unknown = sorted(set(request) - set(self.input_names))
        if unknown:
            raise RequestError(f"unknown input(s) {unknown}; the inputs are {self.input_names}")
        missing = [name for name in self.input_names if name not in request]
        if missing:
            raise RequestError(
                f"missing input(s) {missing}: a request holds `{ITEM_IDS}` and one value per event of each of "
                f"{self.input_names[1:]}"
            )
        item_rows = self._rows(ITEM_IDS, request[ITEM_IDS])
        if not item_rows:
            raise RequestError(f"`{ITEM_IDS}` holds no row: a request needs at least one history")
        ids = [
            np.array([self._item_id(r, j, t) for j, t in enumerate(row)], dtype=np.int64)
            for r, row in enumerate(item_rows)
        ]
        keep = [np.flatnonzero(row != PAD_ID)[-self.max_len :] for row in ids]
        if not allow_empty:
            for r, kept in enumerate(keep):
                if kept.size == 0:
                    raise RequestError(
                        f"`{ITEM_IDS}`[{r}] has no event (only padding: {_short(list(item_rows[r]))}); a history "
                        "needs at least one item id"
                    )
        columns = {ITEM_IDS: [row[kept] for row, kept in zip(ids, keep)]}
        for f in self.features:
            rows = self._rows(f.name, request[f.name])
            if len(rows) != len(item_rows):
                raise RequestError(
                    f"`{f.name}` has {len(rows)} row(s) but `{ITEM_IDS}` has {len(item_rows)}: one row per history"
                )
            values = []
            for r, (row, items) in enumerate(zip(rows, item_rows)):
                if len(row) != len(items):
                    raise RequestError(
                        f"`{f.name}`[{r}] has {len(row)} value(s) but `{ITEM_IDS}`[{r}] has {len(items)} event(s): "
                        "one value per event"
                    )
                values.append(self._feature_ids(f, r, row)[keep[r]])
            columns[f.name] = values
        width = max(1, max(kept.size for kept in keep))
        out = {}
        for name, rows in columns.items():
            batch = np.zeros((len(rows), width), dtype=np.int32)
            for r, row in enumerate(rows):
                if row.size:
                    batch[r, width - row.size :] = row
            out[name] = batch
        return out

    def decode(self, ids: Any) -> np.ndarray:
        """Raw item ids (an object array of ``str``, the shape of ``ids``) of item ids, e.g. of ``model.top_k``.

        Ids outside the vocabulary give ``"[OOV]"``, as the SavedModel's reverse lookup; padding gives ``"[PAD]"``.
        """
        array = np.asarray(ids)
        if array.dtype.kind not in "iu":
            raise RequestError(f"decode takes integer item ids, got dtype {array.dtype} {_short(array.tolist())}")
        array = array.astype(np.int64)
        valid = (array >= 0) & (array < len(self._item_tokens))
        out = np.full(array.shape, OOV_TOKEN, dtype=object)
        out[valid] = self._item_tokens[array[valid]]
        return out

    def recommend(
        self, model: Any, request: Mapping[str, Any], *, k: int = 10, popularity: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best raw item ids of each raw history: ``model.top_k`` on the encoded request, decoded.

        Args:
            model: a trained next-item model (a :class:`~tfsidefuse.NextItemModel`; its ``exclude_history``
                flag decides whether items of the history are recommended).
            request: raw histories, as :meth:`encode` takes them (extra features the model does not read are
                encoded and checked, then left out).
            k: number of items per history.
            popularity: training-event count per item id (``[num_items]``, e.g.
                ``tfsidefuse.evaluation.item_popularity(prepared)``): rows without any event then get the ``k``
                most popular items with their counts as scores, as the SavedModel answers them. Without it such
                rows raise.

        Returns:
            ``(item_ids, scores)``: an object array of raw item ids ``[batch, k]`` and float32 scores
            ``[batch, k]``, best first; the SavedModel's ``serving_default`` outputs for the same request.
        """
        import keras

        names = model_feature_names(model)
        missing = [name for name in names if name not in self.input_names]
        if missing:
            raise ValueError(
                f"the model reads the interaction feature(s) {missing}, which this encoder does not encode"
            )
        if int(model.backbone.max_len) != self.max_len:
            raise ValueError(
                f"the model reads the last {int(model.backbone.max_len)} events but this encoder keeps "
                f"{self.max_len}; build it with InputEncoder.from_prepared(prepared, model=model)"
            )
        if int(model.backbone.num_items) != len(self.item_vocabulary):
            raise ValueError(
                f"the model scores {int(model.backbone.num_items)} item ids but this encoder's vocabulary has "
                f"{len(self.item_vocabulary)}"
            )
        real_items = len(self.item_vocabulary) - NUM_RESERVED_IDS
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= real_items:
            raise ValueError(f"k must be an int in [1, {real_items}] (the number of items), got {k!r}")
        inputs = self.encode(request, allow_empty=popularity is not None)
        inputs = {ITEM_IDS: inputs[ITEM_IDS], **{name: inputs[name] for name in names}}
        scores, top = model.top_k(inputs, k=k)
        scores = np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float32)
        top = np.asarray(keras.ops.convert_to_numpy(top), dtype=np.int64)
        if popularity is not None:
            counts = np.asarray(popularity, dtype=np.float64).copy()
            if counts.shape != (len(self.item_vocabulary),):
                raise ValueError(
                    f"popularity must hold one count per item id, shape ({len(self.item_vocabulary)},), got shape "
                    f"{counts.shape}"
                )
            counts[:NUM_RESERVED_IDS] = -1.0
            # Stable: equally popular items in id order, as the SavedModel's fallback.
            popular = np.argsort(-counts, kind="stable")[:k]
            empty = ~(inputs[ITEM_IDS] != PAD_ID).any(axis=1)
            top[empty] = popular
            scores[empty] = counts[popular].astype(np.float32)
        return self.decode(top), scores

    # ------------------------------------------------------------------ values

    @staticmethod
    def _rows(name: str, value: Any) -> list:
        """A batch of rows: a list of sequences, or a 2-D array."""
        if isinstance(value, np.ndarray):
            if value.ndim != 2:
                raise RequestError(
                    f"`{name}` must be a batch of rows [batch, events], got an array of shape {list(value.shape)}"
                )
            return list(value)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise RequestError(
                f"`{name}` must be a batch of rows [batch, events] (a list of lists), got {type(value).__name__} "
                f"{_short(value)}"
            )
        rows = list(value)
        for r, row in enumerate(rows):
            is_row = isinstance(row, np.ndarray) and row.ndim == 1
            if not is_row and (isinstance(row, (str, bytes)) or not isinstance(row, Sequence)):
                raise RequestError(
                    f"`{name}`[{r}] must be a list of values, one per event, got {type(row).__name__} {_short(row)}"
                    + ("; for one history pass [[...]]" if r == 0 else "")
                )
        return rows

    @staticmethod
    def _token(name: str, r: int, j: int, value: Any, what: str) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RequestError(f"`{name}`[{r}][{j}] is not UTF-8 text: {value!r}") from err
        raise RequestError(f"`{name}`[{r}][{j}] must be {what} (a string), got {type(value).__name__} {value!r}")

    def _item_id(self, r: int, j: int, token: Any) -> int:
        token = self._token(ITEM_IDS, r, j, token, "a raw item id")
        return PAD_ID if token == "" else self._item_index.get(token, OOV_ID)

    def _feature_ids(self, spec: FeatureSpec, r: int, row: Sequence) -> np.ndarray:
        if spec.kind != "bucketized":
            index = self._indexes[spec.name]
            what = f"a raw `{spec.name}` value"
            return np.array(
                [index.get(self._token(spec.name, r, j, v, what), OOV_ID) for j, v in enumerate(row)], dtype=np.int64
            )
        numbers_ = []
        for j, v in enumerate(row):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
                raise RequestError(
                    f"`{spec.name}`[{r}][{j}] must be a number (NaN: unknown), got {type(v).__name__} {v!r}"
                )
            numbers_.append(float(v))
        values = np.array(numbers_, dtype=np.float64)
        buckets = np.searchsorted(self._boundaries[spec.name], values, side="right") + NUM_RESERVED_IDS
        return np.where(np.isnan(values), OOV_ID, buckets).astype(np.int64)

    def __repr__(self) -> str:
        features = ", ".join(f"{f.name} ({f.kind})" for f in self.features) or "none"
        return (
            f"InputEncoder({len(self.item_vocabulary) - NUM_RESERVED_IDS} items, features: {features}, "
            f"max_len={self.max_len})"
        )
