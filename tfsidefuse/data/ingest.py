"""From raw logs to id-encoded user sequences with a leave-one-out split.

Steps: optional k-core filtering, vocabularies (ids 0 and 1 reserved), a stable
sort of each user's events by time, encoding of every side feature, the
item-feature table, and the papers' leave-one-out split (last event: test,
second-to-last: validation, the rest: training).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from tfsidefuse.data.raw_dataset import ITEM, TIME, USER, RawDataset
from tfsidefuse.data.schema import (
    NUM_RESERVED_IDS,
    OOV_ID,
    OOV_TOKEN,
    PAD_TOKEN,
    DatasetSchema,
    FeatureSpec,
    SchemaError,
)

logger = logging.getLogger(__name__)

#: Fewest events a user needs for the leave-one-out split (train, valid, test targets).
MIN_EVENTS_PER_USER = 3


@dataclasses.dataclass
class EncodedDataset:
    """Id-encoded user sequences, ready to be written as TFRecords.

    Events are stored flat, grouped by user in chronological order: the events of
    user ``k`` are ``offsets[k]:offsets[k + 1]``.

    Attributes:
        schema: the schema with vocabulary sizes and bucket boundaries filled in.
        vocabularies: token lists per id space (``item_id``, ``user_id`` and each
            categorical feature); the token at index ``i`` has id ``i``, index 0
            and 1 hold the padding and OOV tokens.
        item_feature_tables: per item-level feature, int32 ``[num_items, max_values]``
            attribute ids of every item id (rows 0 and 1 are padding).
        user_ids: int64 ``[num_users_kept]`` the user id of each sequence.
        offsets: int64 ``[num_users_kept + 1]``.
        item_ids: int64 ``[num_events]``.
        interaction_features: per interaction-level feature, int64 ``[num_events]`` ids.
        stats: counts for the dataset README and checks.
    """

    schema: DatasetSchema
    vocabularies: dict[str, list[str]]
    item_feature_tables: dict[str, np.ndarray]
    user_ids: np.ndarray
    offsets: np.ndarray
    item_ids: np.ndarray
    interaction_features: dict[str, np.ndarray]
    stats: dict

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def k_core_filter(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keeps users and items with at least ``k`` interactions, until stable."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k_core must be a positive int, got {k!r}")
    df = interactions
    while True:
        user_counts = df[USER].map(df[USER].value_counts())
        item_counts = df[ITEM].map(df[ITEM].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return df
        df = df[keep]


def _vocabulary(values: pd.Series, order: str) -> list[str]:
    """Token list (reserved tokens first). ``order``: 'appearance' or 'frequency'."""
    if order == "appearance":
        tokens = pd.unique(values)
    else:
        counts = values.value_counts(sort=False)
        frame = pd.DataFrame({"token": counts.index.astype(str), "count": counts.to_numpy()})
        tokens = frame.sort_values(["count", "token"], ascending=[False, True], kind="stable")["token"].to_numpy()
    tokens = [str(t) for t in tokens]
    clash = {PAD_TOKEN, OOV_TOKEN} & set(tokens)
    if clash:
        raise SchemaError(f"reserved token(s) {sorted(clash)} found among the values of {values.name!r}")
    return [PAD_TOKEN, OOV_TOKEN, *tokens]


def _encode(values: pd.Series, vocab: list[str]) -> np.ndarray:
    index = {tok: i for i, tok in enumerate(vocab)}
    return values.astype(str).map(index).fillna(OOV_ID).to_numpy(dtype=np.int64)


def _bucketize(values: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    values = values.astype(np.float64)
    if spec.boundaries is None:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise SchemaError(f"feature {spec.name!r}: no finite value to compute bucket boundaries from")
        qs = np.quantile(finite, np.linspace(0.0, 1.0, spec.num_buckets + 1)[1:-1])
        spec.boundaries = [float(b) for b in np.unique(qs)]
    ids = NUM_RESERVED_IDS + np.searchsorted(np.asarray(spec.boundaries), values, side="right")
    ids[~np.isfinite(values)] = OOV_ID
    spec.vocab_size = len(spec.boundaries) + 1 + NUM_RESERVED_IDS
    return ids.astype(np.int64)


def _as_token_lists(column: pd.Series, spec: FeatureSpec) -> list[list[str]]:
    out = []
    for item, value in column.items():
        if value is None or (not isinstance(value, (list, tuple, np.ndarray)) and pd.isna(value)):
            out.append([])
        elif isinstance(value, (list, tuple, np.ndarray)):
            out.append([str(v) for v in value])
        elif spec.kind == "multi_categorical":
            raise SchemaError(
                f"feature {spec.name!r}: item {item!r} has value {value!r}; multi_categorical values must be lists"
            )
        else:
            out.append([str(value)])
    return out


def _item_feature_table(
    items: pd.DataFrame, item_vocab: list[str], spec: FeatureSpec, vocabularies: dict[str, list[str]]
) -> np.ndarray:
    by_item = items.assign(**{ITEM: items[ITEM].astype(str)}).drop_duplicates(ITEM).set_index(ITEM)
    column = by_item[spec.source_column].reindex(item_vocab[NUM_RESERVED_IDS:])
    width = spec.max_values
    table = np.zeros((len(item_vocab), width), dtype=np.int32)
    if spec.kind == "bucketized":
        ids = _bucketize(pd.to_numeric(column, errors="coerce").to_numpy(), spec)
        table[NUM_RESERVED_IDS:, 0] = ids
        return table
    lists = _as_token_lists(column, spec)
    if spec.kind == "categorical":
        too_many = [(item_vocab[i + 2], v) for i, v in enumerate(lists) if len(v) > 1]
        if too_many:
            raise SchemaError(
                f"feature {spec.name!r} is categorical but item {too_many[0][0]!r} has {too_many[0][1]!r}"
            )
    flat = pd.Series([tok for toks in lists for tok in toks[:width]], name=spec.name, dtype=object)
    vocab = _vocabulary(flat, "frequency")
    vocabularies[spec.name] = vocab
    spec.vocab_size = len(vocab)
    index = {tok: i for i, tok in enumerate(vocab)}
    for row, toks in enumerate(lists, start=NUM_RESERVED_IDS):
        if not toks:
            table[row, 0] = OOV_ID  # an item without a value: unknown, not padding
        for j, tok in enumerate(toks[:width]):
            table[row, j] = index[tok]
    return table


def encode(
    raw: RawDataset, *, max_len: int = 50, k_core: int | None = None, features: list[str] | None = None
) -> EncodedDataset:
    """Encodes a raw dataset: vocabularies, sorted sequences, side features.

    Args:
        raw: the raw interactions, items and feature declarations.
        max_len: the sequence length the dataset is prepared for (recorded in
            the schema; sequences are stored whole and truncated when read).
        k_core: if set, keep users and items with at least this many
            interactions (iteratively, as the papers' 5-core filtering).
        features: names of the side features to keep (default: all declared).

    Returns:
        An :class:`EncodedDataset`. Users with fewer than 3 events cannot be
        split leave-one-out and are dropped (their count is in ``stats``).
    """
    declared = {f.name: f for f in raw.features}
    if features is not None:
        unknown = [n for n in features if n not in declared]
        if unknown:
            raise SchemaError(f"dataset {raw.name!r}: unknown feature(s) {unknown}; declared: {sorted(declared)}")
        declared = {n: declared[n] for n in features}
    specs = [dataclasses.replace(f) for f in declared.values()]

    df = raw.interactions
    n_raw = len(df)
    if n_raw == 0:
        raise SchemaError(f"dataset {raw.name!r}: no interactions")
    df = df.assign(**{USER: df[USER].astype(str), ITEM: df[ITEM].astype(str)})
    if k_core:
        df = k_core_filter(df, k_core)
    user_codes, user_tokens = pd.factorize(df[USER])
    counts = np.bincount(user_codes, minlength=len(user_tokens))
    short = counts < MIN_EVENTS_PER_USER
    if short.any():
        df = df[~short[user_codes]]
        user_codes, user_tokens = pd.factorize(df[USER])
    if len(df) == 0:
        raise SchemaError(f"dataset {raw.name!r}: no user has {MIN_EVENTS_PER_USER} or more interactions")

    # Stable sort by (user, time): ties keep the file order.
    if raw.has_time:
        order = np.lexsort((pd.to_numeric(df[TIME]).to_numpy(), user_codes))
    else:
        order = np.argsort(user_codes, kind="stable")
    df = df.iloc[order]
    user_codes = user_codes[order]

    vocabularies: dict[str, list[str]] = {
        "user_id": [PAD_TOKEN, OOV_TOKEN, *[str(u) for u in user_tokens]],
        "item_id": _vocabulary(df[ITEM], "appearance"),
    }
    item_ids = _encode(df[ITEM], vocabularies["item_id"])
    offsets = np.concatenate([[0], np.cumsum(np.bincount(user_codes, minlength=len(user_tokens)))]).astype(np.int64)

    interaction_features: dict[str, np.ndarray] = {}
    item_feature_tables: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.level == "interaction":
            if spec.transform == "time_gap":
                t = pd.to_numeric(df[TIME]).to_numpy(dtype=np.float64)
                gap = np.empty_like(t)
                gap[0] = np.nan
                gap[1:] = t[1:] - t[:-1]
                gap[offsets[:-1]] = np.nan  # a user's first event has no previous one
                interaction_features[spec.name] = _bucketize(gap, spec)
            elif spec.kind == "bucketized":
                values = pd.to_numeric(df[spec.source_column], errors="coerce").to_numpy()
                interaction_features[spec.name] = _bucketize(values, spec)
            else:
                column = df[spec.source_column].astype(str).where(df[spec.source_column].notna(), None)
                vocab = _vocabulary(column.dropna().rename(spec.name), "frequency")
                vocabularies[spec.name] = vocab
                spec.vocab_size = len(vocab)
                interaction_features[spec.name] = _encode(column, vocab)
        else:
            item_feature_tables[spec.name] = _item_feature_table(raw.items, vocabularies["item_id"], spec, vocabularies)

    num_items = len(vocabularies["item_id"])
    num_users = len(vocabularies["user_id"])
    schema = DatasetSchema(name=raw.name, features=specs, num_items=num_items, num_users=num_users, max_len=max_len)
    lengths = np.diff(offsets)
    stats = {
        "raw_interactions": int(n_raw),
        "users": int(num_users - NUM_RESERVED_IDS),
        "items": int(num_items - NUM_RESERVED_IDS),
        "interactions": int(len(item_ids)),
        "avg_length": round(float(lengths.mean()), 4),
        "max_length": int(lengths.max()),
        "dropped_short_users": int(short.sum()),
        "train_targets": int((lengths - 3).sum()),
        "train_sequences": int((lengths >= 4).sum()),
        "valid_examples": int(len(lengths)),
        "test_examples": int(len(lengths)),
        "length_counts": {str(n): int(c) for n, c in zip(*np.unique(lengths, return_counts=True))},
    }
    if short.any():
        logger.warning("dropped %d users with fewer than %d events", int(short.sum()), MIN_EVENTS_PER_USER)
    return EncodedDataset(
        schema=schema,
        vocabularies=vocabularies,
        item_feature_tables=item_feature_tables,
        user_ids=np.arange(NUM_RESERVED_IDS, num_users, dtype=np.int64),
        offsets=offsets,
        item_ids=item_ids,
        interaction_features=interaction_features,
        stats=stats,
    )


SPLITS = ("train", "valid", "test")


def split_end(lengths: np.ndarray, split: str) -> np.ndarray:
    """Number of leading events of each user that a split's records hold.

    Leave-one-out: ``test`` holds the whole sequence (its last event is the
    target), ``valid`` all but the last event, ``train`` all but the last two.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return lengths - SPLITS[::-1].index(split)
