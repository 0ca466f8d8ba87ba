"""Dataset schema: the single description of ids and side features.

Every other part of the package derives from it: the TFRecord parse spec, the
model inputs, the padding and OOV ids, the serving signature.

Id conventions, shared by every vocabulary (items, users, every feature):
``0`` is padding, ``1`` is unknown/out-of-vocabulary, real values start at ``2``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import yaml

from tfsidefuse.errors import UserError

PAD_ID = 0
OOV_ID = 1
NUM_RESERVED_IDS = 2
PAD_TOKEN = "[PAD]"
OOV_TOKEN = "[OOV]"

LEVELS = ("item", "interaction")
KINDS = ("categorical", "multi_categorical", "bucketized")
TRANSFORMS = (None, "time_gap")
RESERVED_NAMES = ("item_id", "user_id", "labels")


class SchemaError(UserError, ValueError):
    """A schema or feature declaration is invalid."""


def _check_keys(where: str, data: dict, allowed: set[str]) -> None:
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SchemaError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}")


@dataclasses.dataclass
class FeatureSpec:
    """One side feature.

    Args:
        name: feature name; also the key of the model input and of the TFRecord
            feature list (interaction level).
        level: ``"item"`` (static per item, looked up inside the model from the
            item-feature table) or ``"interaction"`` (one value per event,
            carried in records and requests).
        kind: ``"categorical"`` (one token), ``"multi_categorical"`` (a set of
            tokens per item, item level only) or ``"bucketized"`` (a number
            mapped to a bucket by ``boundaries``).
        column: source column in the raw data; defaults to ``name``.
        max_values: for ``multi_categorical``: how many values per item are
            kept (the first ones, in source order). 1 for the other kinds.
        boundaries: for ``bucketized``: sorted bucket edges. Value ``v`` gets
            id ``2 + #{b in boundaries: b <= v}``; a missing value gets the OOV id.
        num_buckets: for ``bucketized`` without ``boundaries``: quantile edges
            are computed at ingest so that the data fill this many buckets.
        transform: ``"time_gap"`` derives the value from the time column as
            the seconds since the user's previous event (interaction level,
            bucketized; the first event of a user is unknown).
        vocab_size: number of ids including the two reserved ones; set by
            ingest (``len(vocabulary) + 2`` or ``len(boundaries) + 3``).
    """

    name: str
    level: str
    kind: str
    column: str | None = None
    max_values: int = 1
    boundaries: list[float] | None = None
    num_buckets: int | None = None
    transform: str | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def source_column(self) -> str:
        return self.column or self.name

    def validate(self) -> None:
        where = f"feature {self.name!r}"
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise SchemaError(f"feature name must be an identifier, got {self.name!r}")
        if self.name in RESERVED_NAMES:
            raise SchemaError(f"{where}: name is reserved ({RESERVED_NAMES})")
        if self.level not in LEVELS:
            raise SchemaError(f"{where}: level must be one of {LEVELS}, got {self.level!r}")
        if self.kind not in KINDS:
            raise SchemaError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.transform not in TRANSFORMS:
            raise SchemaError(f"{where}: transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if not isinstance(self.max_values, int) or isinstance(self.max_values, bool) or self.max_values < 1:
            raise SchemaError(f"{where}: max_values must be a positive int, got {self.max_values!r}")
        if self.kind != "multi_categorical" and self.max_values != 1:
            raise SchemaError(f"{where}: max_values={self.max_values} is only allowed for multi_categorical")
        if self.kind == "multi_categorical" and self.level != "item":
            raise SchemaError(f"{where}: multi_categorical features must have level 'item', got {self.level!r}")
        if self.kind == "bucketized":
            if self.boundaries is None and self.num_buckets is None:
                raise SchemaError(f"{where}: bucketized features need boundaries or num_buckets")
            if self.boundaries is not None:
                b = [float(x) for x in self.boundaries]
                if any(math.isnan(x) for x in b) or any(x >= y for x, y in zip(b, b[1:])):
                    raise SchemaError(
                        f"{where}: boundaries must be strictly increasing numbers, got {self.boundaries!r}"
                    )
                self.boundaries = b
            if self.num_buckets is not None and (not isinstance(self.num_buckets, int) or self.num_buckets < 2):
                raise SchemaError(f"{where}: num_buckets must be an int >= 2, got {self.num_buckets!r}")
        elif self.boundaries is not None or self.num_buckets is not None:
            raise SchemaError(f"{where}: boundaries/num_buckets are only allowed for bucketized features")
        if self.transform == "time_gap" and (self.level != "interaction" or self.kind != "bucketized"):
            raise SchemaError(f"{where}: transform 'time_gap' needs level 'interaction' and kind 'bucketized'")
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or self.vocab_size < NUM_RESERVED_IDS):
            raise SchemaError(f"{where}: vocab_size must be an int >= {NUM_RESERVED_IDS}, got {self.vocab_size!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "level": self.level, "kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in out and value != f.default:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        _check_keys(
            f"feature {data.get('name', '?')!r}" if isinstance(data, dict) else "feature",
            data,
            {f.name for f in dataclasses.fields(cls)},
        )
        for key in ("name", "level", "kind"):
            if key not in data:
                raise SchemaError(f"feature {data.get('name', '?')!r}: missing required key {key!r}")
        return cls(**data)


@dataclasses.dataclass
class DatasetSchema:
    """A dataset's ids and side features.

    Args:
        name: dataset name.
        features: the side features (position is implicit and not listed).
        num_items: size of the item id space including the two reserved ids.
        num_users: size of the user id space including the two reserved ids.
        max_len: the sequence length the dataset was prepared for.
    """

    name: str
    features: list[FeatureSpec] = dataclasses.field(default_factory=list)
    num_items: int | None = None
    num_users: int | None = None
    max_len: int = 50

    def __post_init__(self) -> None:
        self.features = [f if isinstance(f, FeatureSpec) else FeatureSpec.from_dict(f) for f in self.features]
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SchemaError(f"schema {self.name!r}: duplicate feature name(s) {dup}")
        if not isinstance(self.max_len, int) or self.max_len < 1:
            raise SchemaError(f"schema {self.name!r}: max_len must be a positive int, got {self.max_len!r}")

    @property
    def item_features(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.level == "item"]

    @property
    def interaction_features(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.level == "interaction"]

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise SchemaError(f"schema {self.name!r}: unknown feature {name!r}; known: {[f.name for f in self.features]}")

    def select(self, names: list[str] | None) -> DatasetSchema:
        """A copy keeping only the named features (all when ``names`` is None)."""
        if names is None:
            return dataclasses.replace(self, features=list(self.features))
        return dataclasses.replace(self, features=[self.feature(n) for n in names])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_len": self.max_len,
            "num_items": self.num_items,
            "num_users": self.num_users,
            "features": [f.to_dict() for f in self.features],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSchema:
        _check_keys("schema", data, {f.name for f in dataclasses.fields(cls)})
        if "name" not in data:
            raise SchemaError("schema: missing required key 'name'")
        features = data.get("features") or []
        if not isinstance(features, list):
            raise SchemaError(f"schema {data['name']!r}: 'features' must be a list, got {features!r}")
        return cls(**{**data, "features": [FeatureSpec.from_dict(f) for f in features]})

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as fh:
            yaml.safe_dump(self.to_dict(), fh, sort_keys=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DatasetSchema:
        if not os.path.exists(path):
            raise FileNotFoundError(f"schema file not found: {path}")
        with open(path) as fh:
            data = yaml.safe_load(fh)
        return cls.from_dict(data)
