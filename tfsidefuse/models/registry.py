"""Backbones by config name, and how to build a trainable model from a config."""

from __future__ import annotations

import keras

from tfsidefuse.models.next_item_model import NextItemModel
from tfsidefuse.models.sasrec.sasrec_backbone import SASRecBackbone

#: Config name -> backbone class. Each class takes ``num_items`` and ``max_len``
#: (from the dataset) plus its own hyper-parameters.
BACKBONES = {
    "sasrec": SASRecBackbone,
}


def build_backbone(name: str, params: dict, *, schema, item_feature_tables: dict | None = None) -> keras.layers.Layer:
    """Instantiates a backbone for a dataset schema.

    Args:
        name: a key of :data:`BACKBONES`.
        params: the backbone's hyper-parameters.
        schema: the prepared dataset's :class:`~tfsidefuse.data.schema.DatasetSchema`.
        item_feature_tables: item id -> attribute ids per item-level feature
            (used by backbones that read item attributes).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown model {name!r}; available: {sorted(BACKBONES)}")
    del item_feature_tables  # no registered backbone reads item attributes yet
    return BACKBONES[name](num_items=schema.num_items, max_len=schema.max_len, **params)


def build_model(name: str, params: dict, *, schema, item_feature_tables: dict | None = None,
                train_on: str = "all_positions", exclude_history: bool = False) -> NextItemModel:
    """A :class:`NextItemModel` around the named backbone."""
    backbone = build_backbone(name, params, schema=schema, item_feature_tables=item_feature_tables)
    return NextItemModel(backbone, train_on=train_on, exclude_history=exclude_history)
