"""A prepared dataset: one directory with everything training and serving need.

Layout::

    <dir>/schema.yaml              the DatasetSchema (sizes, boundaries)
    <dir>/vocab/<name>.txt         one token per line; line i is id i
    <dir>/item_features.npz        item id -> attribute ids, per item-level feature
    <dir>/stats.json               dataset statistics
    <dir>/{train,valid,test}/part-XXXXX-of-YYYYY.tfrecord
                                   tf.train.SequenceExample, one per user
    <dir>/manifest.json            size, SHA-256 and record count of every file; fingerprints of the
                                   content, of the raw inputs and of the dataset config

A record holds the user id (context ``user_id``) and the feature lists
``item_id`` and one per interaction-level feature. A split's record of a user
holds the events up to that split's target (the target is the last event).

Writing is atomic: everything goes to a temporary directory beside the target,
which is renamed into place at the end; temporary directories of killed writers are
removed by the next write. Opening checks every file's size against the manifest;
:func:`tfsidefuse.data.manifest.check_prepared` with ``hashes=True`` (``tfsidefuse verify``)
also checks every byte.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import zipfile

import numpy as np
import tensorflow as tf
import yaml

from tfsidefuse.data import manifest as manifest_lib
from tfsidefuse.data.ingest import SPLITS, EncodedDataset, split_end
from tfsidefuse.data.schema import DatasetSchema
from tfsidefuse.errors import PreparedDataError

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
    # Deterministic: the feature lists are a protobuf map, whose default serialization order varies between
    # processes; sorted keys make equal datasets byte-equal (and their fingerprints equal) wherever written.
    return example.SerializeToString(deterministic=True)


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


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed entry times, so equal tables give equal bytes (and equal dataset fingerprints)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(arrays[name]), allow_pickle=False)


def _temp_prefix(directory: str, kind: str) -> str:
    return f".{os.path.basename(directory)}.{kind}-"


def remove_stale_temp_dirs(directory: str) -> list[str]:
    """Removes the temporary directories that killed writers of ``directory`` left beside it.

    A writer's temporary directory carries its process id; those whose process is gone are removed. A writer
    killed between moving the old dataset aside and moving the new one in left no dataset at all: the old one
    is moved back.

    Returns:
        The removed paths.
    """
    parent = os.path.dirname(os.path.abspath(directory))
    if not os.path.isdir(parent):
        return []
    removed = []
    target = os.path.abspath(directory)
    for name in sorted(os.listdir(parent)):
        for kind in ("tmp", "old"):
            prefix = _temp_prefix(directory, kind)
            pid = name[len(prefix) :].split("-", 1)[0] if name.startswith(prefix) else ""
            if not pid.isdigit() or manifest_lib.process_alive(int(pid)):
                continue
            path = os.path.join(parent, name)
            old = os.path.join(path, "old")
            if kind == "old" and os.path.isdir(old) and not os.path.exists(target):
                # Killed between moving the old dataset aside and moving the new one in: put the old one back.
                os.rename(old, target)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def write_prepared(
    encoded: EncodedDataset,
    directory: str | os.PathLike,
    *,
    num_shards: int = 4,
    overwrite: bool = False,
    raw_inputs: dict[str, str] | None = None,
    dataset_config: dict | None = None,
) -> str:
    """Writes an encoded dataset as a prepared-dataset directory, atomically, with its manifest.

    Args:
        encoded: the output of :func:`tfsidefuse.data.ingest.encode`.
        directory: the target directory; must not exist unless ``overwrite``.
        num_shards: TFRecord files per split.
        overwrite: replace an existing prepared dataset.
        raw_inputs: raw file name -> SHA-256 (:func:`tfsidefuse.data.manifest.raw_inputs`), recorded in the
            manifest: ``prepare`` compares it with the raw files before it reuses the directory.
        dataset_config: the dataset config section it was prepared from, recorded in the manifest.

    Returns:
        The directory path.
    """
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")

    def fill(tmp: str) -> None:
        stats = dict(encoded.stats)
        for split in SPLITS:
            stats[f"{split}_records"] = _write_split(encoded, split, os.path.join(tmp, split), num_shards)
        write_metadata(tmp, encoded.vocabularies, encoded.item_feature_tables, stats, encoded.schema)

    return build_prepared_dir(
        directory, fill, overwrite=overwrite, raw_inputs=raw_inputs, dataset_config=dataset_config
    )


def write_metadata(
    directory: str,
    vocabularies: dict[str, list[str]],
    item_feature_tables: dict[str, np.ndarray],
    stats: dict,
    schema: DatasetSchema,
) -> None:
    """Writes the files of a prepared dataset besides the shards: vocabularies, item features, stats, schema."""
    os.makedirs(os.path.join(directory, VOCAB_DIR))
    for name, tokens in vocabularies.items():
        with open(os.path.join(directory, VOCAB_DIR, f"{name}.txt"), "w") as fh:
            fh.write("\n".join(tokens) + "\n")
    _save_npz(os.path.join(directory, ITEM_FEATURES_FILE), item_feature_tables)
    with open(os.path.join(directory, STATS_FILE), "w") as fh:
        json.dump(stats, fh, indent=2)
    schema.save(os.path.join(directory, SCHEMA_FILE))


def build_prepared_dir(
    directory: str | os.PathLike,
    fill,
    *,
    overwrite: bool = False,
    raw_inputs: dict[str, str] | None = None,
    dataset_config: dict | None = None,
) -> str:
    """Builds a prepared-dataset directory atomically: ``fill(tmp)`` writes the data files into a temporary
    directory beside the target, then the manifest is written and the directory renamed into place.

    Args:
        directory: the target directory; must not exist unless ``overwrite``.
        fill: called with the temporary directory; writes the split shards and :func:`write_metadata`.
        overwrite, raw_inputs, dataset_config: as :func:`write_prepared`.

    Returns:
        The directory path.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"prepared dataset directory already exists: {directory} (use overwrite=True)")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temp_dirs(directory)
    tmp = tempfile.mkdtemp(prefix=f"{_temp_prefix(directory, 'tmp')}{os.getpid()}-", dir=parent)
    try:
        fill(tmp)
        manifest_lib.write_manifest(tmp, raw_inputs=raw_inputs, dataset_config=dataset_config)
        os.chmod(tmp, 0o755)
        if os.path.exists(directory):
            trash = tempfile.mkdtemp(prefix=f"{_temp_prefix(directory, 'old')}{os.getpid()}-", dir=parent)
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
        manifest: what every file should be (:mod:`tfsidefuse.data.manifest`).
    """

    directory: str
    schema: DatasetSchema
    item_feature_tables: dict[str, np.ndarray]
    stats: dict
    manifest: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, directory: str | os.PathLike, *, verify: bool = False) -> PreparedDataset:
        """Opens a prepared directory after checking its files against the manifest.

        Args:
            directory: the prepared dataset directory.
            verify: also check every file's SHA-256 and every shard's record count (reads every byte);
                by default only the sizes are checked.

        Raises:
            FileNotFoundError: the directory is not a prepared dataset.
            PreparedDataError: a file is missing or differs from the manifest, or the manifest is missing.
        """
        directory = os.fspath(directory)
        schema_path = os.path.join(directory, SCHEMA_FILE)
        if not os.path.exists(schema_path):
            raise FileNotFoundError(
                f"not a prepared dataset (no {SCHEMA_FILE}): {directory}; run `tfsidefuse prepare` first"
            )
        manifest = manifest_lib.check_prepared(directory, hashes=verify)
        try:
            schema = DatasetSchema.load(schema_path)
            with np.load(os.path.join(directory, ITEM_FEATURES_FILE)) as npz:
                tables = {name: npz[name] for name in npz.files}
            with open(os.path.join(directory, STATS_FILE)) as fh:
                stats = json.load(fh)
        except (OSError, ValueError, KeyError, EOFError, yaml.YAMLError, zipfile.BadZipFile) as err:
            # The sizes matched, so the bytes changed in place: the hashes name the file.
            manifest_lib.check_prepared(directory, manifest, hashes=True)
            raise PreparedDataError(f"prepared dataset {directory} cannot be read: {err}") from err
        return cls(directory=directory, schema=schema, item_feature_tables=tables, stats=stats, manifest=manifest)

    @property
    def fingerprint(self) -> str:
        """SHA-256 over every data file, from the manifest: equal fingerprints mean byte-equal datasets."""
        return self.manifest.get("fingerprint", "")

    def split_records(self, split: str) -> int | None:
        """The number of records the manifest lists for a split (one per user), or None without a manifest."""
        entry = self.manifest.get("splits", {}).get(split)
        return None if entry is None else int(entry["records"])

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
        listed = sorted(
            rel for rel in self.manifest.get("files", {}) if rel.startswith(f"{split}/") and rel.endswith(".tfrecord")
        )
        if listed:
            return [os.path.join(self.directory, *rel.split("/")) for rel in listed]
        found = sorted(tf.io.gfile.glob(os.path.join(self.directory, split, "*.tfrecord")))
        if not found:
            raise FileNotFoundError(f"no TFRecord files for split {split!r} in {self.directory}")
        return found
