"""Readers that turn public dataset formats into a :class:`RawDataset`.

Three formats are supported:

* the S3-Rec text format (``sequences.txt`` + ``item_attributes.json``), used by the
  preprocessed Amazon Beauty / Sports datasets;
* RecBole atomic files (``<name>.inter``, ``<name>.item``, ``<name>.user``);
* the MovieLens ratings datasets of ``tensorflow_datasets``.

All readers return raw tokens as strings: user and item ids, categorical tokens and the
elements of multi-valued features. Numeric columns meant to be bucketized stay float.

A file whose content does not follow its format raises :class:`~tfsidefuse.errors.DataError`, whose
message names the file, the line and the offending value.
"""

from __future__ import annotations

import collections
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tfsidefuse.data.raw_dataset import ITEM, TIME, USER, RawDataset
from tfsidefuse.data.schema import RESERVED_NAMES, FeatureSpec
from tfsidefuse.errors import DataError

__all__ = ["TIME_GAP_BOUNDARIES", "read_recbole", "read_s3rec", "read_tfds_movielens", "time_gap_feature"]

#: Bucket edges (seconds) of the ``time_gap`` feature: a minute, an hour, a day, a week, 30 days, a year.
TIME_GAP_BOUNDARIES: tuple[float, ...] = (60.0, 3600.0, 86400.0, 604800.0, 2592000.0, 31536000.0)

#: A float column with at most this many distinct values is read as a categorical feature.
MAX_CATEGORICAL_FLOAT_VALUES = 32

#: Number of quantile buckets of a float column read as a bucketized feature.
DEFAULT_NUM_BUCKETS = 10

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
RECBOLE_USER = "user_id"
RECBOLE_ITEM = "item_id"
RECBOLE_TIME = "timestamp"

_INT_TOKEN = re.compile(r"[0-9]+")


def time_gap_feature() -> FeatureSpec:
    """The interaction-level ``time_gap`` feature: seconds since the user's previous event, bucketized.

    Returns:
        A new :class:`FeatureSpec` named ``time_gap`` with transform ``"time_gap"`` and
        :data:`TIME_GAP_BOUNDARIES` as bucket edges.
    """
    return FeatureSpec(
        "time_gap", "interaction", "bucketized", transform="time_gap", boundaries=list(TIME_GAP_BOUNDARIES)
    )


def _format_numbers(values: np.ndarray) -> np.ndarray:
    """Turns numbers into string tokens: integral values without a fractional part ("3", not "3.0").

    Non-integral values use the shortest representation of their dtype; NaN becomes ``None``.
    """
    values = np.asarray(values)
    uniques, inverse = np.unique(values, return_inverse=True)
    tokens = []
    for v in uniques:
        if np.isnan(v):
            tokens.append(None)
        elif float(v).is_integer():
            tokens.append(str(int(v)))
        else:
            tokens.append(np.format_float_positional(v, trim="-"))
    return np.asarray(tokens, dtype=object)[inverse.reshape(-1)]


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")


def _read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a leading byte-order mark is dropped), trailing blank lines removed."""
    lines = _read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _read_text(path: Path) -> str:
    """The content of a UTF-8 text file (a leading byte-order mark is dropped).

    Raises:
        FileNotFoundError: the file is missing.
        DataError: the file is not UTF-8 text; the message names the line, column and byte.
    """
    _check_file(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        lineno = data.count(b"\n", 0, err.start) + 1
        bad = data[err.start : err.end]
        raise DataError(
            f"{path}:{lineno}: not UTF-8 text: byte(s) {bad!r} at column {err.start - line_start + 1} ({err.reason})"
        ) from None


def _feature_name(field: str) -> str:
    """A valid feature name for a source column name (identifier, not reserved)."""
    name = re.sub(r"\W", "_", field)
    if not name or name[0].isdigit():
        name = "f_" + name
    while name in RESERVED_NAMES or name in (USER, ITEM, TIME):
        name += "_"
    return name


# ---------------------------------------------------------------------------------------------------------------------
# S3-Rec
# ---------------------------------------------------------------------------------------------------------------------


def _canonical_int(token: str) -> str:
    """The canonical spelling of a non-negative integer token ("007" -> "7", "000" -> "0")."""
    return token.lstrip("0") or "0"


def _read_s3rec_sequences(path: Path) -> tuple[list[str], list[int], list[str]]:
    """Parses ``sequences.txt`` into (users, sequence lengths, flat item tokens), validating every token.

    User ids are non-negative integers; item ids are positive integers, since the format keeps 0 for padding.
    Ids are returned in their canonical spelling ("007" -> "7"), so that they match the attribute file's keys.
    """
    lines = _read_lines(path)
    if not lines:
        raise DataError(f"{path}:1: empty file, expected one line 'user_id item_id [item_id ...]' per user")
    users: list[str] = []
    lengths: list[int] = []
    items: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        row = line.split()
        if not row:
            raise DataError(
                f"{path}:{lineno}: blank line; expected 'user_id item_id [item_id ...]' (at least 2 tokens), "
                f"got {line!r}"
            )
        if len(row) < 2:
            raise DataError(
                f"{path}:{lineno}: user {row[0]!r} has no items; expected 'user_id item_id [item_id ...]' "
                f"(at least 2 tokens), got {line!r}"
            )
        if not (row[0].isascii() and row[0].isdigit()):
            raise DataError(f"{path}:{lineno}: user ids must be non-negative integers, got {row[0]!r}")
        for position, tok in enumerate(row[1:], start=2):
            if not (tok.isascii() and tok.isdigit()):
                raise DataError(
                    f"{path}:{lineno}: item ids must be positive integers, got {tok!r} (token {position} of the line)"
                )
            if _canonical_int(tok) == "0":
                raise DataError(
                    f"{path}:{lineno}: item id {tok!r} (token {position} of the line): item ids in the S3-Rec "
                    f"format start at 1 (0 is padding)"
                )
        user = _canonical_int(row[0])
        if user in seen:
            raise DataError(f"{path}:{lineno}: user {row[0]!r} already appears on line {seen[user]}")
        seen[user] = lineno
        users.append(user)
        lengths.append(len(row) - 1)
        items.extend(_canonical_int(tok) for tok in row[1:])
    return users, lengths, items


def _json_error_line(text: str, key: str, occurrence: int = 1) -> int | None:
    """The line of ``text`` on which the JSON key ``key`` is defined for the ``occurrence``-th time (best effort)."""
    for count, match in enumerate(re.finditer(r'"' + re.escape(key) + r'"\s*:', text), start=1):
        if count == occurrence:
            return text.count("\n", 0, match.start()) + 1
    return None


def _json_context(text: str, pos: int) -> str:
    """What a JSON syntax error at ``pos`` is next to: ``, near '...'`` (up to 40 characters of its line)."""
    near = text[pos : pos + 40].split("\n", 1)[0]
    if near.strip():
        return f", near {near!r}"
    return ", at the end of the file" if not text[pos:].strip() else ", at the end of the line"


class _LazyWhere:
    """Formats as ``file:line`` of a JSON key; the line is only searched for when an error is reported."""

    def __init__(self, path: Path, text: str, key: str) -> None:
        self.path, self.text, self.key = path, text, key

    def __str__(self) -> str:
        return f"{self.path}:{_json_error_line(self.text, self.key) or '?'}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _read_s3rec_attributes(path: Path) -> dict[str, list[str]]:
    """Parses ``item_attributes.json`` into ``{item: [attribute token, ...]}`` (source order, duplicates kept)."""
    text = _read_text(path)
    repeated: list[str] = []

    def pairs_hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        # The top-level object is the last one decoded: its repeated keys are the ones left in ``repeated``.
        counts = collections.Counter(key for key, _ in pairs)  # in first-seen order
        repeated[:] = [key for key, count in counts.items() if count > 1]
        return dict(pairs)

    try:
        data = json.loads(text, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}:{err.lineno}: invalid JSON ({err.msg}) at column {err.colno}{_json_context(text, err.pos)}"
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f'{path}:1: expected a JSON object {{"item_id": [attr_id, ...]}}, '
            f"got {type(data).__name__} {str(data)[:80]!r}"
        )
    if repeated:
        key = repeated[0]
        raise DataError(f"{path}:{_json_error_line(text, key, 2) or '?'}: item {key!r} is listed twice")
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        where = _LazyWhere(path, text, key)
        if not (key.isascii() and key.isdigit()):
            raise DataError(f"{where}: item ids must be non-negative integers, got key {key!r}")
        item = _canonical_int(key)
        if item == "0":
            raise DataError(f"{where}: item id {key!r}: item ids in the S3-Rec format start at 1 (0 is padding)")
        if not isinstance(value, list):
            raise DataError(f"{where}: item {key!r}: expected a list of attribute ids, got {value!r}")
        tokens = []
        for attr in value:
            if isinstance(attr, bool) or not (
                isinstance(attr, int) or (isinstance(attr, str) and _INT_TOKEN.fullmatch(attr))
            ):
                raise DataError(f"{where}: item {key!r}: attribute ids must be integers, got {attr!r}")
            tokens.append(str(int(attr)))
        if item in out:
            raise DataError(f"{where}: item {key!r} is listed twice")
        out[item] = tokens
    return out


def read_s3rec(path: str | os.PathLike, name: str | None = None) -> RawDataset:
    """Reads a dataset in the S3-Rec text format.

    ``sequences.txt`` holds one user per line, ``user_id item_id item_id ...``, items in
    chronological order; ``item_attributes.json`` maps each item id to its list of attribute ids.
    There is no time column: the interactions keep the file order, which is the chronological order.
    Ids are integers; item ids start at 1, as the format keeps 0 for padding.

    Args:
        path: the directory holding ``sequences.txt`` and ``item_attributes.json``.
        name: the dataset name; defaults to the directory's basename.

    Returns:
        A :class:`RawDataset` with interactions ``user``, ``item`` (string ids, file order) and an
        items table ``item``, ``attributes`` (a list of attribute tokens per item, in source order,
        duplicates kept) declaring one item-level ``multi_categorical`` feature ``attributes`` whose
        ``max_values`` is the largest number of attributes of any item. Items that appear in the
        sequences but not in the attribute file get an empty list.

    Raises:
        FileNotFoundError: a file is missing.
        DataError: malformed content (not UTF-8, not an integer id, item id 0, an empty file, a user
            without items, a repeated user or item, invalid JSON or JSON of another shape); the message
            names the file, the line and the bad value.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"S3-Rec dataset directory not found: {root}")
    users, lengths, items = _read_s3rec_sequences(root / "sequences.txt")
    attributes = _read_s3rec_attributes(root / "item_attributes.json")

    interactions = pd.DataFrame(
        {USER: np.repeat(np.asarray(users, dtype=object), lengths), ITEM: np.asarray(items, dtype=object)}
    )
    known = dict(attributes)
    for item in pd.unique(interactions[ITEM]):
        known.setdefault(item, [])
    item_ids = sorted(known, key=int)
    items_df = pd.DataFrame(
        {ITEM: np.asarray(item_ids, dtype=object), "attributes": pd.Series([known[i] for i in item_ids], dtype=object)}
    )
    max_values = max((len(v) for v in known.values()), default=1)
    feature = FeatureSpec("attributes", "item", "multi_categorical", max_values=max(1, max_values))
    return RawDataset(name=name or root.resolve().name, interactions=interactions, items=items_df, features=[feature])


# ---------------------------------------------------------------------------------------------------------------------
# RecBole atomic files
# ---------------------------------------------------------------------------------------------------------------------


def _spaced_header_entry(entry: str) -> bool:
    """Whether a header cell holds several ``field:type`` entries separated by spaces instead of tabs."""
    tokens = entry.split()
    return len(tokens) > 1 and sum(":" in tok for tok in tokens) > 1


def _read_atomic(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """Reads one RecBole atomic file: (field names, field types, columns of raw strings)."""
    lines = _read_lines(path)
    if not lines:
        raise DataError(f"{path}:1: empty file, expected a header 'field:type<TAB>field:type...'")
    fields, types = [], []
    for entry in lines[0].split("\t"):
        if _spaced_header_entry(entry):
            raise DataError(f"{path}:1: the header fields must be separated by tabs, found spaces: {entry.strip()!r}")
        field, sep, ftype = entry.strip().rpartition(":")
        if not sep or not field:
            raise DataError(f"{path}:1: header entries must be 'field:type', got {entry!r}")
        if ftype not in RECBOLE_TYPES:
            raise DataError(
                f"{path}:1: unknown type {ftype!r} in header entry {entry!r}; known types: {list(RECBOLE_TYPES)}"
            )
        if field in fields:
            raise DataError(f"{path}:1: duplicate field {field!r} in the header")
        fields.append(field)
        types.append(ftype)
    rows = [line.split("\t") for line in lines[1:]]
    n = len(fields)
    for lineno, row in enumerate(rows, start=2):
        if len(row) != n:
            line = lines[lineno - 1]
            hint = ""
            if len(row) == 1 and len(line.split()) == n:
                hint = " (the fields must be separated by tabs, found spaces)"
            raise DataError(
                f"{path}:{lineno}: expected {n} tab-separated fields {fields}, got {len(row)}: {line!r}{hint}"
            )
    columns = [list(col) for col in zip(*rows)] if rows else [[] for _ in fields]
    return fields, types, columns


def _float_column(path: Path, field: str, values: list[str]) -> np.ndarray:
    """Parses a float column; empty fields become NaN."""
    numbers = np.empty(len(values), dtype=np.float64)
    for lineno, v in enumerate(values, start=2):
        try:
            numbers[lineno - 2] = float(v) if v.strip() else np.nan
        except ValueError:
            raise DataError(f"{path}:{lineno}: field {field!r} (float) must be a number, got {v!r}") from None
    return numbers


def _check_not_empty(path: Path, fields: list[str], columns: list[list[str]], field: str) -> None:
    """Raises a DataError naming the first line whose value of the required field ``field`` is empty."""
    col = fields.index(field)
    for row, value in enumerate(columns[col]):
        if not value.strip():
            line = "\t".join(column[row] for column in columns)
            raise DataError(f"{path}:{row + 2}: empty {field!r} (field {col + 1} of {line!r}); the field is required")


def _token_column(values: list[str]) -> np.ndarray:
    """Token column as an object array of stripped strings; empty fields become None."""
    return np.asarray([v.strip() or None for v in values], dtype=object)


def _convert_column(path: Path, field: str, ftype: str, values: list[str], level: str) -> tuple[FeatureSpec, pd.Series]:
    """Turns a RecBole column into a feature declaration and its data."""
    name = _feature_name(field)
    if ftype == "token":
        return FeatureSpec(name, level, "categorical"), pd.Series(_token_column(values))
    if ftype == "token_seq":
        if level != "item":
            raise DataError(
                f"{path}: field {field!r} has type token_seq: multi-valued features are only supported at item level"
            )
        lists = [v.split() for v in values]
        max_values = max((len(v) for v in lists), default=1)
        return (
            FeatureSpec(name, level, "multi_categorical", max_values=max(1, max_values)),
            pd.Series(lists, dtype=object),
        )
    if ftype == "float":
        numbers = _float_column(path, field, values)
        distinct = np.unique(numbers[~np.isnan(numbers)])
        if len(distinct) <= MAX_CATEGORICAL_FLOAT_VALUES:
            return FeatureSpec(name, level, "categorical"), pd.Series(_format_numbers(numbers))
        return FeatureSpec(name, level, "bucketized", num_buckets=DEFAULT_NUM_BUCKETS), pd.Series(numbers)
    raise DataError(f"{path}: field {field!r} has type {ftype!r}, which cannot be used as a side feature")


def _select(path: Path, requested: list[str] | None, default: list[str], available: list[str], what: str) -> list[str]:
    if requested is None:
        return default
    if isinstance(requested, str):
        requested = [requested]
    unknown = [f for f in requested if f not in available]
    if unknown:
        raise DataError(f"{path}: unknown {what} column(s) {unknown}; available columns: {available}")
    return list(dict.fromkeys(requested))


def read_recbole(
    path: str | os.PathLike,
    name: str | None = None,
    interaction_features: list[str] | None = None,
    item_features: list[str] | None = None,
    time_gap: bool = True,
) -> RawDataset:
    """Reads a dataset stored as RecBole atomic files.

    The files ``<name>.inter`` (required) and ``<name>.item`` (optional) are tab separated with
    a header of ``field:type`` entries, type one of ``token``, ``token_seq``, ``float``,
    ``float_seq``. ``user_id`` becomes ``user``, ``item_id`` becomes ``item`` and ``timestamp``
    becomes ``time`` (float). ``<name>.user`` is not read.

    Column types map to features as follows: ``token`` -> ``categorical``; ``token_seq`` ->
    ``multi_categorical`` (space separated tokens, item level only, ``max_values`` = the largest
    count observed); ``float`` -> ``categorical`` with string tokens ("3", not "3.0") when the
    column has at most 32 distinct values, else ``bucketized`` with 10 quantile buckets.
    ``float_seq`` columns are not supported as features.

    Args:
        path: the directory holding the atomic files.
        name: the dataset name, also the files' stem; defaults to the directory's basename.
        interaction_features: ``.inter`` columns to keep as interaction features; by default every
            column other than ``user_id``, ``item_id`` and ``timestamp`` (``token_seq`` and
            ``float_seq`` columns are skipped by default).
        item_features: ``.item`` columns to keep as item features; by default every column except
            ``item_id``, ``float_seq`` columns and ``token_seq`` columns whose name contains "title".
        time_gap: when the data have a timestamp, add the interaction feature ``time_gap``
            (seconds since the user's previous event, bucketized at a minute, hour, day, week,
            30 days and a year).

    Returns:
        A :class:`RawDataset`; interactions keep the file order.

    Raises:
        FileNotFoundError: the directory or ``<name>.inter`` is missing.
        DataError: a malformed header (an entry without a known ``:type``, fields separated by spaces)
            or row (a wrong number of fields, an empty ``user_id``/``item_id``/``timestamp``, a
            non-numeric float; the message names the file, the line and the value), a missing
            ``user_id``/``item_id`` column, an unknown column in ``interaction_features`` /
            ``item_features`` (the message lists the available ones) or a column whose type cannot
            be used at the requested level.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"RecBole dataset directory not found: {root}")
    name = name or root.resolve().name
    inter_path = root / f"{name}.inter"
    fields, types, columns = _read_atomic(inter_path)
    for required in (RECBOLE_USER, RECBOLE_ITEM):
        if required not in fields:
            raise DataError(f"{inter_path}:1: the header lacks the field {required!r}; fields are {fields}")
    by_field = dict(zip(fields, columns))
    type_of = dict(zip(fields, types))
    for required in (RECBOLE_USER, RECBOLE_ITEM, RECBOLE_TIME):
        if required in by_field:
            _check_not_empty(inter_path, fields, columns, required)

    interactions = pd.DataFrame(
        {
            USER: pd.Series(_token_column(by_field[RECBOLE_USER])),
            ITEM: pd.Series(_token_column(by_field[RECBOLE_ITEM])),
        }
    )
    has_time = RECBOLE_TIME in fields
    if has_time:
        interactions[TIME] = _float_column(inter_path, RECBOLE_TIME, by_field[RECBOLE_TIME])

    features: list[FeatureSpec] = []
    available = [f for f in fields if f not in (RECBOLE_USER, RECBOLE_ITEM, RECBOLE_TIME)]
    default = [f for f in available if type_of[f] in ("token", "float")]
    for field in _select(inter_path, interaction_features, default, available, "interaction feature"):
        spec, data = _convert_column(inter_path, field, type_of[field], by_field[field], "interaction")
        interactions[spec.name] = data
        features.append(spec)
    if time_gap and has_time:
        features.append(time_gap_feature())

    items_df = None
    item_path = root / f"{name}.item"
    if item_path.is_file():
        ifields, itypes, icolumns = _read_atomic(item_path)
        if RECBOLE_ITEM not in ifields:
            raise DataError(f"{item_path}:1: the header lacks the field {RECBOLE_ITEM!r}; fields are {ifields}")
        iby_field = dict(zip(ifields, icolumns))
        _check_not_empty(item_path, ifields, icolumns, RECBOLE_ITEM)
        itype_of = dict(zip(ifields, itypes))
        iavailable = [f for f in ifields if f != RECBOLE_ITEM]
        idefault = [
            f
            for f in iavailable
            if itype_of[f] == "token"
            or itype_of[f] == "float"
            or (itype_of[f] == "token_seq" and "title" not in f.lower())
        ]
        items_df = pd.DataFrame({ITEM: pd.Series(_token_column(iby_field[RECBOLE_ITEM]))})
        for field in _select(item_path, item_features, idefault, iavailable, "item feature"):
            spec, data = _convert_column(item_path, field, itype_of[field], iby_field[field], "item")
            items_df[spec.name] = data
            features.append(spec)
        items_df = items_df.drop_duplicates(ITEM, keep="first").reset_index(drop=True)
    elif item_features:
        raise DataError(f"{item_path}: file not found, but item features {list(item_features)} were requested")

    names = [f.name for f in features]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(
            f"{root}: feature name(s) {dup} appear in both {inter_path.name} and {item_path.name}; "
            f"select one with interaction_features / item_features"
        )
    return RawDataset(name=name, interactions=interactions, items=items_df, features=features)


# ---------------------------------------------------------------------------------------------------------------------
# tensorflow_datasets MovieLens
# ---------------------------------------------------------------------------------------------------------------------


def read_tfds_movielens(
    name: str = "movielens/100k-ratings",
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
) -> RawDataset:
    """Reads a MovieLens ratings dataset of ``tensorflow_datasets``.

    Needs the ``tensorflow_datasets`` package (imported here only) and the prepared data in
    ``data_dir`` (or network access so that ``tfds`` can download and prepare it).

    Args:
        name: a ``movielens/*-ratings`` dataset name, e.g. ``"movielens/100k-ratings"`` or
            ``"movielens/1m-ratings"``.
        data_dir: the ``tensorflow_datasets`` data directory; ``None`` uses tfds' default.
        split: the split to read (MovieLens has only ``"train"``).

    Returns:
        A :class:`RawDataset` with interactions ``user``, ``item`` (string ids), ``time``
        (int64 seconds), ``rating`` (string tokens such as ``"4"``) in the dataset's order, and an
        items table with one row per movie: ``item``, ``genres`` (a list of genre names, duplicates
        removed). Declared features: ``rating`` (interaction, categorical), ``time_gap``
        (interaction, bucketized) and ``genres`` (item, multi_categorical, ``max_values`` = the most
        genres of any movie).

    Raises:
        ImportError: ``tensorflow_datasets`` is not installed.
        DataError: ``name`` is not a MovieLens ratings dataset with the expected fields.
    """
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "read_tfds_movielens needs the 'tensorflow_datasets' package (pip install tensorflow-datasets)"
        ) from err

    ds, info = tfds.load(name, split=split, data_dir=None if data_dir is None else os.fspath(data_dir), with_info=True)
    needed = ("user_id", "movie_id", "timestamp", "user_rating", "movie_genres")
    missing = [k for k in needed if k not in info.features]
    if missing:
        raise DataError(
            f"tfds dataset {name!r} lacks the field(s) {missing}; a movielens '*-ratings' dataset "
            f"is needed (fields: {sorted(info.features)})"
        )
    genre_feature = info.features["movie_genres"].feature
    genre_names = list(getattr(genre_feature, "names", None) or [])

    ds = ds.map(lambda x: {k: x[k] for k in needed}, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ragged_batch(65536).prefetch(2)
    users, movies, times, ratings, genre_values, genre_lengths = [], [], [], [], [], []
    for batch in ds:
        users.append(batch["user_id"].numpy())
        movies.append(batch["movie_id"].numpy())
        times.append(batch["timestamp"].numpy())
        ratings.append(batch["user_rating"].numpy())
        genres = batch["movie_genres"]
        if isinstance(genres, tf.RaggedTensor):
            genre_values.append(genres.flat_values.numpy())
            genre_lengths.append(genres.row_lengths().numpy())
        else:
            dense = genres.numpy()
            genre_values.append(dense.reshape(-1))
            genre_lengths.append(np.full(dense.shape[0], dense.shape[1], dtype=np.int64))

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros([0], dtype=dtype)

    user_arr = cat(users, object)
    movie_arr = cat(movies, object)
    interactions = pd.DataFrame(
        {
            USER: pd.Series(user_arr, dtype=object).str.decode("utf-8"),
            ITEM: pd.Series(movie_arr, dtype=object).str.decode("utf-8"),
            TIME: cat(times, np.int64).astype(np.int64),
            "rating": pd.Series(_format_numbers(cat(ratings, np.float32))),
        }
    )

    lengths = cat(genre_lengths, np.int64).astype(np.int64)
    values = cat(genre_values, np.int64).astype(np.int64)
    # One row per movie (in order of first appearance): the genres of its first rating.
    first = np.sort(np.unique(movie_arr, return_index=True)[1]) if len(movie_arr) else np.zeros([0], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    genre_tokens = np.asarray(genre_names, dtype=object) if genre_names else None
    genre_lists = []
    for row in first:
        ids = values[offsets[row] : offsets[row + 1]]
        tokens = genre_tokens[ids] if genre_tokens is not None else ids.astype(np.str_)
        genre_lists.append(list(dict.fromkeys(tokens.tolist())))
    items_df = pd.DataFrame(
        {ITEM: interactions[ITEM].to_numpy()[first], "genres": pd.Series(genre_lists, dtype=object)}
    )
    max_values = max((len(g) for g in genre_lists), default=1)
    features = [
        FeatureSpec("rating", "interaction", "categorical"),
        time_gap_feature(),
        FeatureSpec("genres", "item", "multi_categorical", max_values=max(1, max_values)),
    ]
    return RawDataset(name=name, interactions=interactions, items=items_df, features=features)
