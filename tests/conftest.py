"""Shared fixtures: a tiny hand-checkable raw dataset and the real-data location."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from tfsidefuse.data.raw_dataset import RawDataset  # noqa: E402
from tfsidefuse.data.schema import FeatureSpec  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Under another Keras backend (`KERAS_BACKEND=jax`), the tests marked `tensorflow_only` are skipped."""
    if keras.backend.backend() == "tensorflow":
        return
    skip = pytest.mark.skip(
        reason=f"needs the TensorFlow backend (tf.data, tf.function, gradient tapes or export); "
        f"this run uses {keras.backend.backend()}"
    )
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_raw() -> RawDataset:
    """Three users; ``c`` has two events only and is dropped by the split.

    Chronological order (time, ties keep file order):
      a: y(t1,r4) z(t2,r3) x(t3,r5) x(t4,r2)
      b: y(t1,r1) z(t1,r1) w(t2,r2)
    """
    interactions = pd.DataFrame(
        {
            "user": ["a", "a", "a", "a", "b", "b", "b", "c", "c"],
            "item": ["x", "y", "z", "x", "y", "z", "w", "x", "y"],
            "time": [3, 1, 2, 4, 1, 1, 2, 5, 6],
            "rating": [5, 4, 3, 2, 1, 1, 2, 3, 4],
        }
    )
    items = pd.DataFrame({"item": ["x", "y", "z", "w"], "cat": [["c1", "c2"], ["c2"], [], ["c3", "c1", "c2"]]})
    features = [
        FeatureSpec("cat", "item", "multi_categorical", max_values=2),
        FeatureSpec("rating", "interaction", "categorical"),
        FeatureSpec("gap", "interaction", "bucketized", transform="time_gap", boundaries=[0.5, 1.5]),
    ]
    return RawDataset("tiny", interactions, items, features)
