"""The manifest of a prepared dataset: record counts from the TFRecord framing, deterministic fingerprints."""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf

from tfsidefuse.data.ingest import encode
from tfsidefuse.data.manifest import check_prepared, content_fingerprint, count_records, read_manifest
from tfsidefuse.data.prepared import PreparedDataset, write_prepared
from tfsidefuse.errors import PreparedDataError


def test_count_records_reads_the_framing(tmp_path):
    path = str(tmp_path / "three.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for payload in (b"a", b"", b"x" * 1000):
            writer.write(payload)
    # 12-byte header + data + 4-byte footer per record.
    assert os.path.getsize(path) == 3 * 16 + 1 + 0 + 1000
    assert count_records(path) == 3
    open(tmp_path / "empty.tfrecord", "wb").close()
    assert count_records(str(tmp_path / "empty.tfrecord")) == 0
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 1)
    with pytest.raises(PreparedDataError, match="record 2 claims 1000 bytes, past the end of the file"):
        count_records(path)
    with open(path, "r+b") as fh:
        fh.truncate(20)  # inside the second record's header
    with pytest.raises(PreparedDataError, match="truncated TFRecord header at byte 17"):
        count_records(path)


def test_equal_data_give_equal_fingerprints_and_the_manifest_describes_the_files(tiny_raw, tmp_path):
    first = PreparedDataset.open(write_prepared(encode(tiny_raw, max_len=3), tmp_path / "a", num_shards=2))
    second = PreparedDataset.open(write_prepared(encode(tiny_raw, max_len=3), tmp_path / "b", num_shards=2))
    assert first.fingerprint == second.fingerprint == content_fingerprint(first.directory)
    other = PreparedDataset.open(write_prepared(encode(tiny_raw, max_len=2), tmp_path / "c", num_shards=2))
    assert other.fingerprint != first.fingerprint
    manifest = read_manifest(first.directory)
    assert manifest["splits"] == {s: {"records": 2, "shards": 2} for s in ("train", "valid", "test")}
    assert "schema.yaml" in manifest["files"] and "vocab/item_id.txt" in manifest["files"]
    assert json.dumps(manifest, sort_keys=True) == json.dumps(
        check_prepared(first.directory, hashes=True), sort_keys=True
    )
