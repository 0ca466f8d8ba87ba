"""Partitioned interaction logs: many CSV or Parquet files that together hold one log.

A log split into files (``events/part-*.csv``, a Hive-style ``date=*/part-*.parquet`` tree) is read file by
file. The files are taken in sorted path order and the rows of each file in file order; that order is the
file order of the log (it decides ties between events of one user with equal timestamps).

Columns: ``columns`` maps the roles ``user``, ``item`` and ``time`` to column names (defaults: ``user``,
``item``, ``time``; ``time`` is optional and used only if present). Every other column becomes an
interaction-level ``categorical`` feature named after it (values as strings; an empty cell is unknown); with a
time column a ``time_gap`` feature is added. The pandas path (:func:`read_partitioned`) and the Beam path
(:mod:`tfsidefuse.data.beam_prepare`, which reads each file in a worker) read files with the same function,
:func:`read_partition`, so both see the same values.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pandas as pd

from tfsidefuse.data.raw_dataset import ITEM, TIME, USER, RawDataset
from tfsidefuse.data.readers import _feature_name, time_gap_feature
from tfsidefuse.data.schema import FeatureSpec
from tfsidefuse.errors import ConfigError, DataError

FORMATS = ("csv", "parquet")
ROLES = (USER, ITEM, TIME)


def column_roles(columns: dict | None) -> dict[str, str]:
    """The source column of each role (``user``, ``item``, ``time``), defaults filled in.

    Raises:
        ConfigError: an unknown role or a column name that is not a non-empty string.
    """
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(ROLES))
    if unknown:
        raise ConfigError(f"dataset.columns: unknown role(s) {unknown}; roles are {list(ROLES)}")
    for role, name in columns.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"dataset.columns.{role}: expected a column name, got {name!r}")
    return {role: columns.get(role, role) for role in ROLES}


def list_partitions(pattern: str) -> list[str]:
    """The files a glob pattern matches (``**`` descends into folders), sorted: the file order of the log.

    Raises:
        ConfigError: no file matches.
    """
    if "://" in pattern:
        from apache_beam.io.filesystems import FileSystems  # remote file systems need Beam's clients

        found = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    else:
        found = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not found:
        raise ConfigError(f"dataset.path: no file matches {pattern!r}")
    return found


def _open(path: str, mode: str = "rb"):
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.open(path)
    return open(path, mode)


def read_header(path: str, fmt: str) -> list[str]:
    """The column names of one partition.

    Raises:
        DataError: the file is empty or not a file of its format; the message names it.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"dataset.source: partitioned format must be one of {FORMATS}, got {fmt!r}")
    try:
        with _open(path) as fh:
            if fmt == "csv":
                return [str(c) for c in pd.read_csv(fh, nrows=0, dtype=str).columns]
            import pyarrow.parquet as pq

            return list(pq.read_schema(fh).names)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable {fmt.upper()} file: {err}") from None


def partition_features(header: list[str], roles: dict[str, str]) -> list[FeatureSpec]:
    """The feature declarations of a partitioned log: one categorical feature per column besides the roles,
    and ``time_gap`` when there is a time column."""
    role_columns = {roles[USER], roles[ITEM], roles[TIME]}
    features = [FeatureSpec(_feature_name(c), "interaction", "categorical") for c in header if c not in role_columns]
    if roles[TIME] in header:
        features.append(time_gap_feature())
    return features


def read_partition(path: str, fmt: str, roles: dict[str, str], header: list[str]) -> pd.DataFrame:
    """One partition as interactions: ``user``, ``item`` (strings), ``time`` (float64, when the log has one)
    and the feature columns as strings (``None`` where empty), named as their features.

    Args:
        path: the file.
        fmt: ``csv`` or ``parquet``.
        roles: role -> column name (:func:`column_roles`).
        header: the columns every partition must have (those of the first partition).

    Raises:
        DataError: the file cannot be parsed, its columns differ from ``header``, a user or item is empty or a
            time is not a number; the message names the file (and the line of a CSV file) and the value.
    """
    try:
        with _open(path) as fh:
            if fmt == "csv":
                frame = pd.read_csv(fh, dtype=str, keep_default_na=False, na_values=[""])
            else:
                frame = pd.read_parquet(fh)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as err:
        raise DataError(f"{path}: malformed {fmt.upper()} partition: {str(err).strip()}") from None
    columns = [str(c) for c in frame.columns]
    if columns != list(header):
        raise DataError(f"{path}: columns {columns} differ from those of the first partition {list(header)}")
    line = (lambda row: f"{path}:{row + 2}") if fmt == "csv" else (lambda row: f"{path}: row {row}")
    out = {}
    for role in (USER, ITEM):
        col = frame[roles[role]]
        missing = col.isna().to_numpy()
        if missing.any():
            row = int(np.argmax(missing))
            raise DataError(f"{line(row)}: empty {role} ({roles[role]!r} column)")
        out[role] = col.astype(str)
    if roles[TIME] in columns:
        raw = frame[roles[TIME]]
        time = pd.to_numeric(raw, errors="coerce")
        bad = (time.isna() & raw.notna()).to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"{line(row)}: time {raw.iloc[row]!r} ({roles[TIME]!r} column) is not a number")
        out[TIME] = time.astype(np.float64)
    for c in columns:
        if c not in (roles[USER], roles[ITEM], roles[TIME]):
            col = frame[c]
            out[_feature_name(c)] = col.astype(str).where(col.notna(), None)
    return pd.DataFrame(out)


def read_partitioned(pattern: str, fmt: str, columns: dict | None = None, name: str | None = None) -> RawDataset:
    """Reads a partitioned log into one :class:`RawDataset` (the pandas path).

    Args:
        pattern: a glob of the files (``logs/*.csv``; ``**`` matches folders).
        fmt: ``csv`` or ``parquet``.
        columns: role -> column name (see :func:`column_roles`).
        name: the dataset name; defaults to the name of the folder of the first file.

    Returns:
        A dataset without item features: interaction features from the extra columns, plus ``time_gap``.
    """
    roles = column_roles(columns)
    files = list_partitions(pattern)
    header = read_header(files[0], fmt)
    check_header(files[0], header, roles)
    frames = [read_partition(path, fmt, roles, header) for path in files]
    interactions = pd.concat(frames, ignore_index=True)
    return RawDataset(
        name=name or os.path.basename(os.path.dirname(os.path.abspath(files[0]))),
        interactions=interactions,
        items=None,
        features=partition_features(header, roles),
    )


def check_header(path: str, header: list[str], roles: dict[str, str]) -> None:
    """Checks that the first partition has the user and item columns.

    Raises:
        DataError: naming the file and the missing column.
    """
    for role in (USER, ITEM):
        if roles[role] not in header:
            raise DataError(f"{path}: no {role} column {roles[role]!r} (columns: {header}); set dataset.columns.{role}")
