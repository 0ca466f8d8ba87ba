"""A prepared dataset: one directory with everything training and serving need.

Layout::

    <dir>/schema.yaml              the DatasetSchema (sizes, boundaries)
    <dir>/vocab/<name>.txt         one token per line; line i is id i
    <dir>/item_features.npz        item id -> attribute ids, per item-level feature
    <dir>/stats.json               dataset statistics
    <dir>/{train,valid,test}/part-XXXXX-of-YYYYY.tfrecord
                                   tf.train.SequenceExample, one per user

A record holds the user id (context ``user_id``) and the feature lists
``item_id`` and one per interaction-level feature. A split's record of a user
holds the events up to that split's target (the target is the last event).

Writing is atomic: everything goes to a temporary directory beside the target,
which is renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from tfsidefuse.data.ingest import SPLITS, EncodedDataset, split_end
from tfsidefuse.data.schema import DatasetSchema

SCHEMA_FILE = "schema.yaml"
STATS_FILE = "stats.json"
ITEM_FEATURES_FILE = "item_features.npz"
VOCAB_DIR = "vocab"
ITEM_ID = "item_id"
USER_ID = "user_id"


def _int64_list(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def sequence_example(user_id: int, item_ids, interaction_features: dict) -> bytes:
    """Serializes one user's events as a ``tf.train.SequenceExample``."""
    lists = {ITEM_ID: tf.train.FeatureList(feature=[_int64_list([int(i)]) for i in item_ids])}
    for name, ids in interaction_features.items():
        lists[name] = tf.train.FeatureList(feature=[_int64_list([int(i)]) for i in ids])
    example = tf.train.SequenceExample(
        context=tf.train.Features(feature={USER_ID: _int64_list([int(user_id)])}),
        feature_lists=tf.train.FeatureLists(feature_list=lists),
    )
    return example.SerializeToString()


def _write_split(encoded: EncodedDataset, split: str, directory: str, num_shards: int) -> int:
    os.makedirs(directory)
    ends = split_end(encoded.lengths(), split)
    starts = encoded.offsets[:-1]
    writers = [
        tf.io.TFRecordWriter(os.path.join(directory, f"part-{i:05d}-of-{num_shards:05d}.tfrecord"))
        for i in range(num_shards)
    ]
    count = 0
    try:
        for k, (user, start, n) in enumerate(zip(encoded.user_ids, starts, ends)):
            stop = start + n
            feats = {name: ids[start:stop] for name, ids in encoded.interaction_features.items()}
            writers[k % num_shards].write(sequence_example(user, encoded.item_ids[start:stop], feats))
            count += 1
    finally:
        for w in writers:
            w.close()
    return count


def write_prepared(
    encoded: EncodedDataset, directory: str | os.PathLike, *, num_shards: int = 4, overwrite: bool = False
) -> str:
    """Writes an encoded dataset as a prepared-dataset directory, atomically.

    Args:
        encoded: the output of :func:`tfsidefuse.data.ingest.encode`.
        directory: the target directory; must not exist unless ``overwrite``.
        num_shards: TFRecord files per split.
        overwrite: replace an existing prepared dataset.

    Returns:
        The directory path.
    """
    directory = os.path.abspath(os.fspath(directory))
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"prepared dataset directory already exists: {directory} (use overwrite=True)")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
        stats = dict(encoded.stats)
        for split in SPLITS:
            stats[f"{split}_records"] = _write_split(encoded, split, os.path.join(tmp, split), num_shards)
        os.makedirs(os.path.join(tmp, VOCAB_DIR))
        for name, tokens in encoded.vocabularies.items():
            with open(os.path.join(tmp, VOCAB_DIR, f"{name}.txt"), "w") as fh:
                fh.write("\n".join(tokens) + "\n")
        np.savez(os.path.join(tmp, ITEM_FEATURES_FILE), **encoded.item_feature_tables)
        with open(os.path.join(tmp, STATS_FILE), "w") as fh:
            json.dump(stats, fh, indent=2)
        encoded.schema.save(os.path.join(tmp, SCHEMA_FILE))
        os.chmod(tmp, 0o755)
        if os.path.exists(directory):
            trash = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
            os.rename(directory, os.path.join(trash, "old"))
            os.rename(tmp, directory)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


@dataclasses.dataclass
class PreparedDataset:
    """A prepared dataset directory, opened for reading.

    Attributes:
        directory: its path.
        schema: the dataset schema.
        item_feature_tables: item id -> attribute ids per item-level feature.
        stats: dataset statistics written at prepare time.
    """

    directory: str
    schema: DatasetSchema
    item_feature_tables: dict[str, np.ndarray]
    stats: dict

    @classmethod
    def open(cls, directory: str | os.PathLike) -> PreparedDataset:
        directory = os.fspath(directory)
        schema_path = os.path.join(directory, SCHEMA_FILE)
        if not os.path.exists(schema_path):
            raise FileNotFoundError(
                f"not a prepared dataset (no {SCHEMA_FILE}): {directory}; run `tfsidefuse prepare` first"
            )
        schema = DatasetSchema.load(schema_path)
        with np.load(os.path.join(directory, ITEM_FEATURES_FILE)) as npz:
            tables = {name: npz[name] for name in npz.files}
        with open(os.path.join(directory, STATS_FILE)) as fh:
            stats = json.load(fh)
        return cls(directory=directory, schema=schema, item_feature_tables=tables, stats=stats)

    def vocabulary(self, name: str) -> list[str]:
        """Tokens of an id space (``item_id``, ``user_id`` or a categorical feature); index = id."""
        path = os.path.join(self.directory, VOCAB_DIR, f"{name}.txt")
        if not os.path.exists(path):
            raise KeyError(f"no vocabulary {name!r} in {self.directory}")
        with open(path) as fh:
            return fh.read().splitlines()

    def files(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        found = sorted(tf.io.gfile.glob(os.path.join(self.directory, split, "*.tfrecord")))
        if not found:
            raise FileNotFoundError(f"no TFRecord files for split {split!r} in {self.directory}")
        return found
