"""The manifest of a prepared dataset: what every file should be, so damage is found before it skews a number.

``manifest.json`` lists every file of a prepared dataset with its size and SHA-256, the number of records of
every TFRecord shard, the totals per split, a fingerprint of the raw inputs and of the dataset config it was
prepared from, and one ``fingerprint`` of the whole content (which results rows record).
"""

from __future__ import annotations

import hashlib
import os

MANIFEST_FILE = "manifest.json"
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
