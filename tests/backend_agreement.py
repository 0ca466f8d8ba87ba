"""Runs every registered model under the Keras backend of this process (``KERAS_BACKEND``), for cross-backend tests.

    python tests/backend_agreement.py DIR [OTHER_DIR]

Writes ``DIR/<name>.keras`` (one tiny model per entry of ``BACKBONES``, random weights) and ``DIR/logits.npz``
(its logits on fixed inputs). With ``OTHER_DIR`` (written by a process on another backend) it also loads each
``OTHER_DIR/<name>.keras`` and writes the logits of those loaded models to ``DIR/loaded_logits.npz``.

Two logits per model: ``<name>.last`` (inference output, last position, reserved ids excluded) and
``<name>.all`` (``all_positions=True``, every slot).
"""

from __future__ import annotations

import os
import sys

import keras
import numpy as np

import tfsidefuse  # noqa: F401  (registers the classes for loading)
from tfsidefuse.data.schema import DatasetSchema, FeatureSpec
from tfsidefuse.models.registry import BACKBONES, build_model

SIZES = {"hidden_dim": 8, "num_layers": 2, "num_heads": 2, "ff_dim": 16, "dropout": 0.1, "attention_dropout": 0.1}
NUM_ITEMS = 20
SCHEMA = DatasetSchema(
    name="agreement",
    features=[
        FeatureSpec("category", "item", "multi_categorical", max_values=2, vocab_size=7),
        FeatureSpec("brand", "item", "categorical", vocab_size=5),
        FeatureSpec("rating", "interaction", "categorical", vocab_size=6),
    ],
    num_items=NUM_ITEMS,
    num_users=10,
    max_len=8,
)
INPUTS = {
    "item_ids": np.array([[0, 0, 5, 7, 9, 3], [3, 4, 5, 6, 2, 8], [0, 0, 0, 0, 11, 19]], dtype="int32"),
    "rating": np.array([[0, 0, 2, 5, 3, 4], [4, 3, 2, 5, 5, 1], [0, 0, 0, 0, 3, 2]], dtype="int32"),
}


def item_feature_tables() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tables = {
        "category": np.stack([rng.integers(2, 7, NUM_ITEMS), rng.integers(0, 7, NUM_ITEMS)], axis=1),
        "brand": rng.integers(2, 5, size=(NUM_ITEMS, 1)),
    }
    for table in tables.values():
        table[0] = 0
    return {name: table.astype("int32") for name, table in tables.items()}


def logits(model: keras.Model) -> dict[str, np.ndarray]:
    return {
        "last": np.asarray(model(INPUTS), dtype="float64"),
        "all": np.asarray(model(INPUTS, all_positions=True), dtype="float64"),
    }


def main(directory: str, other: str | None = None) -> None:
    os.makedirs(directory, exist_ok=True)
    out = {}
    for index, name in enumerate(sorted(BACKBONES)):
        keras.utils.set_random_seed(index)
        model = build_model(name, dict(SIZES), schema=SCHEMA, item_feature_tables=item_feature_tables())
        model(INPUTS)
        # Weights far from their initial values (which keep the logits near zero), the same at every run.
        rng = np.random.default_rng(index)
        for variable in model.trainable_variables:
            variable.assign(rng.normal(size=variable.shape).astype("float32") * 0.3)
        model.save(os.path.join(directory, f"{name}.keras"))
        out.update({f"{name}.{kind}": value for kind, value in logits(model).items()})
    np.savez(os.path.join(directory, "logits.npz"), **out)
    if other:
        loaded = {}
        for name in sorted(BACKBONES):
            model = keras.models.load_model(os.path.join(other, f"{name}.keras"))
            loaded.update({f"{name}.{kind}": value for kind, value in logits(model).items()})
        np.savez(os.path.join(directory, "loaded_logits.npz"), **loaded)
    imported = "imported" if sys.modules.get("tensorflow") is not None else "not imported"
    print(f"{keras.backend.backend()}: {len(BACKBONES)} models, tensorflow {imported}")


if __name__ == "__main__":
    main(*sys.argv[1:])
