"""The manifest of a prepared dataset: what every file should be, so damage is found before it skews a number.

``manifest.json`` lists every file of a prepared dataset with its size and SHA-256, the number of records of
every TFRecord shard, the totals per split, a fingerprint of the raw inputs and of the dataset config it was
prepared from, and one ``fingerprint`` of the whole content (which results rows record).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile

from tfsidefuse.errors import PreparedDataError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
TFRECORD_SUFFIX = ".tfrecord"
#: Files of a prepared directory that describe it rather than hold its data; they are not in the fingerprint.
META_FILES = (MANIFEST_FILE, "prepare_config.json")
_CHUNK = 1 << 20


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_files(directory: str) -> list[str]:
    """Paths (relative, ``/``-separated, sorted) of the data files of a prepared directory."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            if rel not in META_FILES and not name.startswith("."):
                found.append(rel)
    return sorted(found)


def combined_fingerprint(hashes: dict[str, str]) -> str:
    """One SHA-256 over ``path hash`` lines in path order: equal exactly when every file is equal."""
    digest = hashlib.sha256()
    for rel in sorted(hashes):
        digest.update(f"{rel} {hashes[rel]}\n".encode())
    return digest.hexdigest()


def content_fingerprint(directory: str) -> str:
    """The fingerprint of a prepared directory's data files, recomputed from their bytes."""
    directory = os.fspath(directory)
    return combined_fingerprint({rel: file_sha256(os.path.join(directory, rel)) for rel in data_files(directory)})


def raw_inputs(paths: list[str]) -> dict[str, str]:
    """File name -> SHA-256 of the raw files a dataset is read from (the inputs of its fingerprint)."""
    return {os.path.basename(p): file_sha256(p) for p in sorted(paths)}


def count_records(path: str) -> int:
    """Records of a TFRecord file, from its framing alone (8-byte length, 4-byte CRC, data, 4-byte CRC).

    Raises:
        PreparedDataError: the lengths do not chain to the end of the file (truncated, padded or not a
            TFRecord file).
    """
    size = os.path.getsize(path)
    count = offset = 0
    with open(path, "rb") as fh:
        while offset < size:
            header = fh.read(12)
            if len(header) < 12:
                raise PreparedDataError(f"{path}: truncated TFRecord header at byte {offset} of {size}")
            length = int.from_bytes(header[:8], "little")
            offset += 12 + length + 4
            if offset > size:
                raise PreparedDataError(
                    f"{path}: record {count} claims {length} bytes, past the end of the file ({size} bytes): "
                    "the file is truncated or is not a TFRecord file"
                )
            fh.seek(offset)
            count += 1
    return count


def build_manifest(directory: str, *, raw_inputs: dict | None = None, dataset_config: dict | None = None) -> dict:
    """The manifest of a prepared directory as it is on disk now (sizes, hashes, record counts).

    Args:
        directory: the prepared directory.
        raw_inputs: raw input file name -> SHA-256 (:func:`raw_inputs`), or None for generated data.
        dataset_config: the dataset config section it was prepared from.
    """
    directory = os.fspath(directory)
    files = {}
    splits: dict[str, dict] = {}
    for rel in data_files(directory):
        path = os.path.join(directory, rel)
        entry = {"size": os.path.getsize(path), "sha256": file_sha256(path)}
        if rel.endswith(TFRECORD_SUFFIX):
            entry["records"] = count_records(path)
            split = splits.setdefault(rel.split("/", 1)[0], {"shards": 0, "records": 0})
            split["shards"] += 1
            split["records"] += entry["records"]
        files[rel] = entry
    return {
        "format": MANIFEST_FORMAT,
        "fingerprint": combined_fingerprint({rel: entry["sha256"] for rel, entry in files.items()}),
        "raw_inputs": raw_inputs,
        "raw_fingerprint": combined_fingerprint(raw_inputs) if raw_inputs is not None else None,
        "dataset_config": dataset_config,
        "splits": splits,
        "files": files,
    }


def write_manifest(directory: str, **kwargs) -> dict:
    """Writes ``manifest.json`` for a prepared directory (see :func:`build_manifest`), atomically."""
    manifest = build_manifest(directory, **kwargs)
    atomic_write_text(os.path.join(directory, MANIFEST_FILE), json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def read_manifest(directory: str) -> dict:
    """The manifest of a prepared directory.

    Raises:
        PreparedDataError: there is none (made by an older version, or not a prepared directory) or it is damaged.
    """
    path = os.path.join(os.fspath(directory), MANIFEST_FILE)
    if not os.path.isfile(path):
        raise PreparedDataError(
            f"{directory}: no {MANIFEST_FILE}, so its files cannot be checked (prepared by an older version, or "
            "not a prepared dataset); prepare it again with `tfsidefuse prepare --overwrite`"
        )
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PreparedDataError(f"{path}: unreadable manifest ({err}); prepare the dataset again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or "files" not in manifest:
        raise PreparedDataError(f"{path}: not a manifest of format {MANIFEST_FORMAT}; prepare the dataset again")
    return manifest


def check_prepared(directory: str, manifest: dict | None = None, *, hashes: bool = False) -> dict:
    """Checks a prepared directory against its manifest; returns the manifest.

    Always (cheap): every listed file exists with its listed size, the small files (schema, vocabularies,
    item features, statistics) have their listed SHA-256, and no split holds a shard the manifest does not
    list. With ``hashes``: also every shard's SHA-256 and record count. A shard damaged in place without a
    change of size is found when it is read (:func:`tfsidefuse.data.pipeline.reading`).

    Raises:
        PreparedDataError: naming the first file that differs and how.
    """
    directory = os.fspath(directory)
    manifest = manifest if manifest is not None else read_manifest(directory)
    listed = manifest["files"]
    problems = []
    for rel, entry in sorted(listed.items()):
        path = os.path.join(directory, rel)
        if not os.path.isfile(path):
            problems.append(f"{rel}: missing")
            continue
        size = os.path.getsize(path)
        if size != entry["size"]:
            problems.append(f"{rel}: {size} bytes, the manifest lists {entry['size']}")
            continue
        if not hashes and rel.endswith(TFRECORD_SUFFIX):
            continue
        try:
            digest = file_sha256(path)
        except OSError as err:
            problems.append(f"{rel}: unreadable ({err.strerror or err})")
            continue
        if digest != entry["sha256"]:
            problems.append(
                f"{rel}: content differs from the manifest (SHA-256 {digest[:12]}…, listed {entry['sha256'][:12]}…)"
            )
        elif "records" in entry:
            records = count_records(path)
            if records != entry["records"]:
                problems.append(f"{rel}: {records} records, the manifest lists {entry['records']}")
    for split in manifest.get("splits", {}):
        split_dir = os.path.join(directory, split)
        names = sorted(os.listdir(split_dir)) if os.path.isdir(split_dir) else []
        extra = [f"{split}/{n}" for n in names if n.endswith(TFRECORD_SUFFIX) and f"{split}/{n}" not in listed]
        problems.extend(f"{rel}: not in the manifest (a shard added after prepare)" for rel in extra)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
        raise PreparedDataError(
            f"prepared dataset {directory} is damaged: {problems[0]}{more}; prepare it again with "
            "`tfsidefuse prepare --overwrite`"
        )
    return manifest


def atomic_write_text(path: str, text: str) -> None:
    """Writes a text file so that readers see the old content or the new one, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-{os.getpid()}-", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(directory: str) -> list[str]:
    """Removes the temporary files (``.<name>.tmp-<pid>-...``) that killed writers left in a directory.

    Returns:
        The removed paths.
    """
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        head, sep, rest = name.partition(".tmp-")
        pid = rest.split("-", 1)[0].split(".", 1)[0]
        if not (name.startswith(".") and sep and pid.isdigit()) or process_alive(int(pid)):
            continue
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
