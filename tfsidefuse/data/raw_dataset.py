"""Raw interaction logs with side features, as readers produce them."""

from __future__ import annotations

import dataclasses

import pandas as pd

from tfsidefuse.data.schema import FeatureSpec, SchemaError

USER = "user"
ITEM = "item"
TIME = "time"


@dataclasses.dataclass
class RawDataset:
    """Interaction logs and item attributes before any id is assigned.

    Args:
        name: dataset name.
        interactions: one row per event with columns ``user``, ``item``,
            optionally ``time`` (any sortable number; when absent the row
            order within a user is the chronological order) and one column
            per interaction-level feature.
        items: one row per item with column ``item`` and one column per
            item-level feature; a multi-valued feature holds a list (or tuple)
            of tokens per row. ``None`` when there are no item features.
        features: the side-feature declarations (vocabularies are built at
            ingest).
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame | None = None
    features: list[FeatureSpec] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def has_time(self) -> bool:
        return TIME in self.interactions.columns

    def validate(self) -> None:
        where = f"dataset {self.name!r}"
        for col in (USER, ITEM):
            if col not in self.interactions.columns:
                raise SchemaError(
                    f"{where}: interactions lack column {col!r}; columns are {list(self.interactions.columns)}"
                )
        for f in self.features:
            if f.level == "interaction":
                needed = TIME if f.transform == "time_gap" else f.source_column
                if needed not in self.interactions.columns:
                    raise SchemaError(
                        f"{where}: interaction feature {f.name!r} needs column {needed!r} in interactions"
                    )
            else:
                if self.items is None or f.source_column not in self.items.columns:
                    raise SchemaError(f"{where}: item feature {f.name!r} needs column {f.source_column!r} in items")
        if self.items is not None and ITEM not in self.items.columns:
            raise SchemaError(f"{where}: items lack column {ITEM!r}")
