"""Side-information front end: item attributes and interaction features as embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from tfsidefuse.layers._checks import check_choice, check_positive_int, get_initializer, is_positive_int
from tfsidefuse.layers.item_feature_lookup import ItemFeatureLookup
from tfsidefuse.layers.side_feature_embedding import POOLINGS, SideFeatureEmbedding

ITEM_FEATURE_KEYS = ("name", "vocab_size", "max_values")
INTERACTION_FEATURE_KEYS = ("name", "vocab_size")
# The model input that carries the item ids; no feature may take its name.
ITEM_IDS_KEY = "item_ids"


def _normalize_features(argument: str, features: Any, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    if isinstance(features, (str, Mapping)) or not isinstance(features, Sequence):
        raise ValueError(
            f"`{argument}` must be a list of dicts with keys {list(keys)}. Received: {argument}={features!r}"
        )
    normalized = []
    for feature in features:
        if not isinstance(feature, Mapping):
            raise ValueError(
                f"Every entry of `{argument}` must be a dict with keys {list(keys)}. Received: {feature!r}"
            )
        feature = dict(feature)
        if "max_values" in keys:
            feature.setdefault("max_values", 1)
        unknown = sorted(set(feature) - set(keys))
        missing = [key for key in keys if key not in feature]
        if unknown or missing:
            raise ValueError(
                f"Every entry of `{argument}` must have exactly the keys {list(keys)}. "
                f"Received: {feature!r} (unknown: {unknown}, missing: {missing})"
            )
        name = feature["name"]
        if not isinstance(name, str) or not name.isidentifier() or name == ITEM_IDS_KEY:
            raise ValueError(
                f"Feature names in `{argument}` must be identifiers other than {ITEM_IDS_KEY!r}. "
                f"Received: name={name!r}"
            )
        for key in keys[1:]:
            if not is_positive_int(feature[key], allow_bool=False):
                raise ValueError(
                    f"`{key}` of feature {name!r} must be a positive int. Received: {key}={feature[key]!r}"
                )
        normalized.append({key: feature[key] for key in keys})
    return normalized


def normalize_side_features(
    item_features: Sequence[Mapping[str, Any]], interaction_features: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Validates side-feature declarations and returns them as plain JSON-able lists.

    Args:
        item_features: dicts `{"name", "vocab_size", "max_values"}`
            (`max_values` defaults to 1).
        interaction_features: dicts `{"name", "vocab_size"}`.

    Returns:
        `(item_features, interaction_features)` as lists of dicts with exactly
        the keys above, in the given order.

    Raises:
        ValueError: on a malformed entry or a name used twice.
    """
    items = _normalize_features("item_features", item_features, ITEM_FEATURE_KEYS)
    interactions = _normalize_features("interaction_features", interaction_features, INTERACTION_FEATURE_KEYS)
    names = [feature["name"] for feature in items + interactions]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Side feature names must be unique. Received duplicate name(s) {duplicates} in {names}")
    return items, interactions


@keras.saving.register_keras_serializable(package="tfsidefuse")
class SideInformationEmbedding(keras.layers.Layer):
    """Embeds every side feature of a sequence, one `[batch, seq_len, d]` tensor per feature.

    The shared side-information front end of the fusion models. For an item
    feature `j` with item table `T_j` (item id -> `m_j` attribute ids, held in
    the weights by an `ItemFeatureLookup`) and embedding table `E_{a_j}`, slot
    `t` of the item sequence `s` gets the pooled attribute embedding

    `a_{j,t} = pool_k(mu_k E_{a_j}[tau_k])`, `(tau_1..tau_m) = T_j[s_t]`,
    `mu_k = [tau_k != 0]`

    (`sum`, `mean` or `max` over the valid values, see `SideFeatureEmbedding`).
    An interaction feature `k` is given per slot as ids `b^(k)` and embedded as
    `[b^(k)_t != 0] E_{b_k}[b^(k)_t]`. Padding gives the zero vector in both
    cases: the padding item has no attributes and padded slots carry id 0.

    Item tables start all-padding (zero embeddings); assign them with
    `set_item_feature_tables`. They are non-trainable weights, so they are
    saved and restored with the weights, not with the config.

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1.
        embedding_dim: width of every feature embedding.
        item_features: item-level features, a list of dicts
            `{"name": str, "vocab_size": int, "max_values": int}`; `vocab_size`
            counts the padding and OOV ids, `max_values` is the number of
            attribute ids per item (1 for a single-valued feature).
        interaction_features: interaction-level features, a list of dicts
            `{"name": str, "vocab_size": int}`; each is read from the input
            dict under its name.
        pooling: `"sum"`, `"mean"` or `"max"`, how the values of a
            multi-valued item feature are pooled.
        embeddings_initializer: initializer of the feature tables; `None`
            gives `N(0, 0.02)`, as RecBole.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"`, int `[batch, seq_len]` (left-padded
            with 0), and one int `[batch, seq_len]` entry per interaction
            feature, keyed by its name; other keys are ignored.

    Returns:
        A dict feature name -> `[batch, seq_len, embedding_dim]`, item
        features first, each group in declaration order.

    Example:

    ```python
    layer = SideInformationEmbedding(
        num_items=5,
        embedding_dim=8,
        item_features=[{"name": "category", "vocab_size": 6, "max_values": 2}],
        interaction_features=[{"name": "rating", "vocab_size": 7}],
    )
    layer.set_item_feature_tables({"category": np.array([[0, 0], [0, 0], [2, 3], [4, 0], [5, 2]])})
    outputs = layer({"item_ids": np.array([[0, 2, 4]]), "rating": np.array([[0, 6, 3]])})
    outputs["category"]  # [1, 3, 8]; slot 0 (padding) is zero
    ```

    Reference:
        Liu et al., "Non-invasive Self-attention for Side Information Fusion
        in Sequential Recommendation", AAAI 2021 (item-related and
        behavior-related side information); Xie et al., "Decoupled Side
        Information Fusion for Sequential Recommendation", SIGIR 2022
        (attribute pooling of the official code).
    """

    def __init__(
        self,
        num_items: int,
        embedding_dim: int,
        item_features: Sequence[Mapping[str, Any]] = (),
        interaction_features: Sequence[Mapping[str, Any]] = (),
        pooling: str = "sum",
        embeddings_initializer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_items", num_items, allow_bool=False)
        check_positive_int("embedding_dim", embedding_dim, allow_bool=False)
        check_choice("pooling", pooling, POOLINGS)
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.item_features, self.interaction_features = normalize_side_features(item_features, interaction_features)
        self.pooling = pooling
        self.embeddings_initializer = get_initializer(embeddings_initializer)

    @property
    def feature_names(self) -> list[str]:
        """Names of the embedded features, in output order."""
        return [feature["name"] for feature in self.item_features + self.interaction_features]

    def _embedding(self, feature: dict[str, Any]) -> SideFeatureEmbedding:
        # Serialized initializers give each table a fresh (unseeded) instance.
        return SideFeatureEmbedding(
            feature["vocab_size"],
            self.embedding_dim,
            pooling=self.pooling,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
            dtype=self.dtype_policy,
            name=f"{feature['name']}_embedding",
        )

    def build(self, inputs_shape: Any = None) -> None:
        self.item_feature_lookups = []
        self.item_feature_embeddings = []
        for feature in self.item_features:
            lookup = ItemFeatureLookup(
                self.num_items, feature["max_values"], dtype=self.dtype_policy, name=f"{feature['name']}_lookup"
            )
            lookup.build()
            self.item_feature_lookups.append(lookup)
            embedding = self._embedding(feature)
            embedding.build()
            self.item_feature_embeddings.append(embedding)
        self.interaction_feature_embeddings = []
        for feature in self.interaction_features:
            embedding = self._embedding(feature)
            embedding.build()
            self.interaction_feature_embeddings.append(embedding)
        self.built = True

    def set_item_feature_tables(self, tables: Mapping[str, Any]) -> None:
        """Assigns the item id -> attribute ids table of every item feature.

        Args:
            tables: dict feature name -> integer array `[num_items,
                max_values]`, one entry per item feature; row 0 (the padding
                item) must be all zeros.

        Raises:
            ValueError: on a missing or unknown feature name, or a table of
                the wrong shape or with invalid ids. No table is assigned then.
        """
        names = [feature["name"] for feature in self.item_features]
        if not isinstance(tables, Mapping):
            raise ValueError(f"`tables` must be a dict feature name -> array. Received: {type(tables).__name__}")
        unknown = sorted(set(tables) - set(names))
        if unknown:
            raise ValueError(f"`tables` has unknown item feature(s) {unknown}; the item features are {names}")
        missing = [name for name in names if name not in tables]
        if missing:
            raise ValueError(f"`tables` lacks the item feature(s) {missing}; expected one table for each of {names}")
        if not self.built:
            self.build()
        for feature in self.item_features:
            expected = (self.num_items, feature["max_values"])
            shape = np.shape(tables[feature["name"]])
            if shape != expected:
                raise ValueError(
                    f"The table of item feature {feature['name']!r} must have shape (num_items, max_values) = "
                    f"{expected}. Received: shape={shape}"
                )
        for feature, lookup in zip(self.item_features, self.item_feature_lookups):
            try:
                lookup.set_table(tables[feature["name"]])
            except ValueError as error:
                raise ValueError(f"Item feature {feature['name']!r}: {error}") from error

    def call(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        outputs = {}
        if self.item_features and ITEM_IDS_KEY not in inputs:
            raise ValueError(f"`inputs` must contain {ITEM_IDS_KEY!r}. Received keys: {sorted(inputs)}")
        for feature, lookup, embedding in zip(
            self.item_features, self.item_feature_lookups, self.item_feature_embeddings
        ):
            outputs[feature["name"]] = embedding(lookup(inputs[ITEM_IDS_KEY]))
        for feature, embedding in zip(self.interaction_features, self.interaction_feature_embeddings):
            if feature["name"] not in inputs:
                raise ValueError(
                    f"`inputs` lacks the interaction feature {feature['name']!r}. Received keys: {sorted(inputs)}"
                )
            outputs[feature["name"]] = embedding(inputs[feature["name"]])
        return outputs

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "num_items": self.num_items,
                "embedding_dim": self.embedding_dim,
                "item_features": [dict(feature) for feature in self.item_features],
                "interaction_features": [dict(feature) for feature in self.interaction_features],
                "pooling": self.pooling,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            }
        )
        return config
