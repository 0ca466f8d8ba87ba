"""A prepared dataset as one ``.npz`` file of padded numpy arrays, for training where TensorFlow is not installed.

TFRecords need TensorFlow to be read. :func:`export_numpy` (run where TensorFlow is installed) reads a prepared
dataset's splits through the ``tf.data`` pipeline of :mod:`tfsidefuse.data.pipeline` and writes them, left-padded
to ``max_len``, to one file together with everything a model needs from the dataset: the schema (sizes and side
features), the item-feature tables and, optionally, the run config. :func:`load_numpy` reads that file with numpy
alone: a process whose Keras runs on JAX trains from it with ``model.fit(inputs, labels)``.

Layout of the file (every entry a plain array, read with ``allow_pickle=False``)::

    meta                  JSON text: format version, schema, objective, fingerprint, config (or null)
    table.<feature>       item id -> attribute ids, int32 [num_items, max_values], per item-level feature
    <split>.<input>       int32 [examples, max_len] per model input (``item_ids`` and the interaction features)
    <split>.labels        int32 [examples, max_len] (train, loss at every position) or [examples] (last position)

Run as a module to convert a prepared dataset or the dataset of a config::

    python -m tfsidefuse.data.numpy_export --config benchmarks/configs/amazon-beauty-difsr-15min.yaml --out beauty.npz
    python -m tfsidefuse.data.numpy_export --prepared runs/data/demo --out demo.npz
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import zipfile
from typing import Any

import numpy as np

from tfsidefuse.config import OBJECTIVES
from tfsidefuse.data.schema import DatasetSchema

#: Version of the file layout; :func:`load_numpy` refuses other versions.
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
LABELS = "labels"


@dataclasses.dataclass
class NumpyDataset:
    """A prepared dataset read from an ``.npz`` written by :func:`export_numpy`.

    Attributes:
        schema: the dataset schema (item count, ``max_len``, side features).
        item_feature_tables: item id -> attribute ids per item-level feature.
        splits: ``split -> (inputs, labels)``; ``inputs`` maps each model input
            to an int32 ``[examples, max_len]`` array, left-padded with 0.
        objective: the training objective the train split was cut for
            (``all_positions``, ``all_targets`` or ``prefix``; ``prefix``
            examples carry one label each, as the evaluation splits).
        fingerprint: the source prepared dataset's fingerprint.
        config: the run config the file was written for, as a dict, or ``None``.
    """

    schema: DatasetSchema
    item_feature_tables: dict[str, np.ndarray]
    splits: dict[str, tuple[dict[str, np.ndarray], np.ndarray]]
    objective: str
    fingerprint: str = ""
    config: dict | None = None


def export_numpy(
    prepared: Any,
    path: str | os.PathLike,
    *,
    objective: str = "all_positions",
    config: dict | None = None,
    batch_size: int = 1024,
) -> str:
    """Writes a prepared dataset's splits and tables to one ``.npz`` file (needs TensorFlow).

    The splits are read by :func:`tfsidefuse.data.pipeline.make_dataset`
    without shuffling and padded to the schema's ``max_len``: the train split
    for ``objective``, the validation and test splits in the ``eval`` layout
    (the whole history before the split's target as input, the target as
    label).

    Args:
        prepared: a :class:`~tfsidefuse.data.prepared.PreparedDataset` or its directory.
        path: the file to write (replaced atomically).
        objective: the training objective of the train split: ``"all_positions"``,
            ``"all_targets"`` or ``"prefix"`` (``training.objective``).
        config: the run config to store beside the data (``RunConfig.to_dict()``), or ``None``.
        batch_size: examples per batch while reading (memory only; the arrays are the same).

    Returns:
        The path written.
    """
    from tfsidefuse.data.pipeline import make_dataset
    from tfsidefuse.data.prepared import PreparedDataset

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not isinstance(prepared, PreparedDataset):
        prepared = PreparedDataset.open(prepared)
    schema = prepared.schema
    arrays: dict[str, np.ndarray] = {
        f"table.{name}": np.asarray(table, dtype="int32") for name, table in prepared.item_feature_tables.items()
    }
    for split in SPLITS:
        dataset = make_dataset(
            prepared,
            split,
            objective=objective if split == "train" else "eval",
            batch_size=batch_size,
            shuffle=False,
            pad_to_max_len=True,
        )
        parts: dict[str, list[np.ndarray]] = {}
        for inputs, labels in dataset.as_numpy_iterator():
            for name, value in {**inputs, LABELS: labels}.items():
                parts.setdefault(name, []).append(np.asarray(value, dtype="int32"))
        for name, values in parts.items():
            arrays[f"{split}.{name}"] = np.concatenate(values, axis=0)
    meta = {
        "format_version": FORMAT_VERSION,
        "schema": schema.to_dict(),
        "objective": objective,
        "fingerprint": prepared.fingerprint,
        "config": config,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temp = f"{path}.tmp-{os.getpid()}"
    with open(temp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(temp, path)
    return path


def load_numpy(path: str | os.PathLike) -> NumpyDataset:
    """Reads a file written by :func:`export_numpy`, with numpy alone (no TensorFlow).

    Raises:
        ValueError: the file is not such a file, or of another format version.
    """
    try:
        with np.load(os.fspath(path), allow_pickle=False) as npz:
            entries = {name: npz[name] for name in npz.files}
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a numpy dataset file: {err}") from err
    if "meta" not in entries:
        raise ValueError(f"{path}: not a numpy dataset file (no 'meta' entry)")
    meta = json.loads(str(entries.pop("meta")))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    tables: dict[str, np.ndarray] = {}
    splits: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
    for key, value in entries.items():
        prefix, _, name = key.partition(".")
        if prefix == "table":
            tables[name] = value
        elif prefix in SPLITS:
            inputs, labels = splits.get(prefix, ({}, None))
            if name == LABELS:
                labels = value
            else:
                inputs[name] = value
            splits[prefix] = (inputs, labels)
    return NumpyDataset(
        schema=DatasetSchema.from_dict(meta["schema"]),
        item_feature_tables=tables,
        splits=splits,
        # Files written by version 0.2.0 name the objective "train_mode".
        objective=meta["objective"] if "objective" in meta else meta["train_mode"],
        fingerprint=meta.get("fingerprint", ""),
        config=meta.get("config"),
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m tfsidefuse.data.numpy_export (--config C | --prepared DIR) --out FILE``."""
    parser = argparse.ArgumentParser(
        prog="python -m tfsidefuse.data.numpy_export",
        description="Write a prepared dataset's splits and item-feature tables to one .npz (needs TensorFlow).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a config or preset name: its dataset is prepared if needed")
    source.add_argument("--prepared", help="a prepared dataset directory")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument(
        "--objective", choices=OBJECTIVES, help="the train split's objective; default: the config's, else all_positions"
    )
    # The option's name in version 0.2.0.
    parser.add_argument("--train-mode", dest="objective", choices=OBJECTIVES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = None
    if args.config:
        import yaml

        import tfsidefuse

        overrides = {key: yaml.safe_load(value) for key, _, value in (s.partition("=") for s in args.set)}
        run_config = tfsidefuse.load_config(args.config, overrides)
        prepared = tfsidefuse.prepare(run_config)
        config = run_config.to_dict()
        objective = args.objective or run_config.training.objective
    else:
        prepared = args.prepared
        objective = args.objective or "all_positions"
    written = export_numpy(prepared, args.out, objective=objective, config=config)
    print(f"wrote {written} ({os.path.getsize(written) / 2**20:.1f} MiB, objective {objective})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
