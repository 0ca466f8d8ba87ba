"""Export a trained run as a versioned SavedModel for TensorFlow Serving.

Layout of one export (``<base>/<version>/``)::

    saved_model.pb, variables/      the graph and weights (Keras ExportArchive)
    assets/item_id.txt, ...         vocabularies used by the lookup tables
    assets.extra/tf_serving_warmup_requests
                                    real requests from the validation split
    assets.extra/item_embeddings.tsv
                                    raw item id, tab, the item's row of the
                                    scoring table (space-separated), one line per item
    assets.extra/export_info.json   what was exported, from which run, with which options

A version is written to ``<base>/.tmp-<version>-<pid>`` and renamed into place
when complete: TF Serving only loads directories named by an integer, so a
killed export leaves nothing a server would load.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import re
import shutil

import keras
import numpy as np
import tensorflow as tf

from tfsidefuse.config import load_config
from tfsidefuse.data.manifest import process_alive
from tfsidefuse.data.pipeline import parse_sequence_examples, reading
from tfsidefuse.data.prepared import ITEM_ID, PreparedDataset
from tfsidefuse.data.schema import OOV_ID, PAD_ID
from tfsidefuse.errors import UserError
from tfsidefuse.evaluation import item_popularity
from tfsidefuse.export.serving_graph import EXAMPLES, ITEM_IDS, PREDICT_EXAMPLES, SERVING_DEFAULT, ServingGraph
from tfsidefuse.export.warmup import MAX_WARMUP_RECORDS, WARMUP_FILE, write_warmup_file
from tfsidefuse.version import __version__

logger = logging.getLogger(__name__)

ASSETS_EXTRA = "assets.extra"
EXPORT_INFO_FILE = "export_info.json"
ITEM_EMBEDDINGS_FILE = "item_embeddings.tsv"
#: Batch sizes the warm-up requests cycle through (of `serving_default` requests).
WARMUP_BATCH_SIZES = (1, 8, 32)
_TMP = re.compile(r"^\.tmp-(\d+)-(\d+)$")


class ExportError(UserError, ValueError):
    """An export cannot be written (bad option, existing version, missing run files)."""


def existing_versions(base_dir: str) -> list[int]:
    """The model versions in a models directory (sub-directories named by an integer), sorted."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(n) for n in os.listdir(base_dir) if n.isdigit() and os.path.isdir(os.path.join(base_dir, n)))


def _remove_stale_tmp(base_dir: str) -> None:
    """Removes temporary directories of exports whose process is gone (killed exports)."""
    for name in os.listdir(base_dir):
        match = _TMP.match(name)
        if match and not process_alive(int(match.group(2))):
            shutil.rmtree(os.path.join(base_dir, name), ignore_errors=True)


def _resolve_prepared(run_dir: str, prepared_dir: str | None) -> PreparedDataset:
    if prepared_dir is None:
        config_path = os.path.join(run_dir, "config.yaml")
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"no config.yaml in {run_dir}; is it a training run directory?")
        prepared_dir = load_config(config_path).dataset.prepared_dir
        if not os.path.isabs(prepared_dir) and not os.path.exists(prepared_dir):
            raise FileNotFoundError(
                f"the run's prepared dataset {prepared_dir!r} (relative to the directory it was trained in) "
                f"is not found from {os.getcwd()}; run from that directory or pass the prepared dataset directory"
            )
    return PreparedDataset.open(prepared_dir)


def _bucket_value(bucket: int, boundaries: list[float]) -> float:
    """A number that the data layer encodes as `bucket` (NaN for padding/OOV)."""
    if bucket < 2 or bucket > len(boundaries) + 2:
        return float("nan")
    if bucket == 2:
        return boundaries[0] - 1.0
    return boundaries[bucket - 3]


def warmup_requests(graph: ServingGraph, prepared: PreparedDataset, count: int) -> list[tuple[str, dict]]:
    """Requests built from the validation split: each record's history before its target.

    Three quarters are raw `serving_default` requests (batch sizes cycling
    through `WARMUP_BATCH_SIZES`, rows right-padded with ""), one quarter
    `predict_examples` requests with the records themselves.
    """
    if count <= 0:
        return []
    items = prepared.vocabulary(ITEM_ID)
    bucketized = {f.name for f in graph.features if f.kind == "bucketized"}
    vocabs = {f.name: prepared.vocabulary(f.name) for f in graph.features if f.name not in bucketized}
    need = sum(itertools.islice(itertools.cycle(WARMUP_BATCH_SIZES), count))
    records = tf.data.TFRecordDataset(prepared.files("valid")).take(need)
    histories, serialized = [], []
    for record in records:
        serialized.append(record.numpy())
        parsed = parse_sequence_examples(record, prepared.schema)
        n = int(parsed[ITEM_ID].shape[0]) - 1
        row = {ITEM_IDS: [items[i] for i in parsed[ITEM_ID].numpy()[:n]]}
        for f in graph.features:
            ids = parsed[f.name].numpy()[:n]
            if f.kind == "bucketized":
                row[f.name] = [_bucket_value(int(i), f.boundaries) for i in ids]
            else:
                row[f.name] = [vocabs[f.name][i] for i in ids]
        histories.append(row)
    if not histories:
        return []
    requests = []
    start = 0
    sizes = itertools.cycle(WARMUP_BATCH_SIZES)
    for i in range(count):
        size = next(sizes)
        rows = [histories[(start + j) % len(histories)] for j in range(size)]
        start += size
        if i % 4 == 3:
            picked = [serialized[(start + j) % len(serialized)] for j in range(size)]
            requests.append((PREDICT_EXAMPLES, {EXAMPLES: np.array(picked, dtype=object)}))
            continue
        width = max(len(r[ITEM_IDS]) for r in rows)
        inputs = {}
        for name in rows[0]:
            numeric = name in bucketized
            fill = float("nan") if numeric else ""
            padded = [r[name] + [fill] * (width - len(r[name])) for r in rows]
            inputs[name] = np.array(padded, dtype=np.float64 if numeric else object)
        requests.append((SERVING_DEFAULT, inputs))
    return requests


def _write_item_embeddings(path: str, model, items: list[str]) -> None:
    table = np.asarray(keras.ops.convert_to_numpy(model.backbone.item_table()), dtype=np.float32)
    with open(path, "w") as fh:
        for i in range(2, len(items)):
            fh.write(items[i] + "\t" + " ".join(f"{v:.8g}" for v in table[i]) + "\n")


def _signature_info(functions: dict) -> dict:
    """Signature name -> input and output dtypes and shapes, from the traced endpoint functions."""
    info = {}
    for name, function in functions.items():
        fn = function.get_concrete_function()
        spec = fn.structured_input_signature[0][0]
        outputs = fn.structured_outputs
        info[name] = {
            "inputs": {k: {"dtype": v.dtype.name, "shape": v.shape.as_list()} for k, v in spec.items()},
            "outputs": {k: {"dtype": v.dtype.name, "shape": v.shape.as_list()} for k, v in outputs.items()},
        }
    return info


def export_model(
    run_dir: str | os.PathLike,
    base_dir: str | os.PathLike,
    *,
    version: int | None = None,
    k: int = 10,
    exclude_history: bool = False,
    prepared_dir: str | os.PathLike | None = None,
    model_name: str | None = None,
    warmup: int = 100,
) -> str:
    """Exports a training run as ``<base_dir>/<version>/``, a SavedModel for TensorFlow Serving.

    Signatures (all outputs are dicts; inputs are named as below):

    - ``serving_default``: ``item_ids`` string ``[batch, events]`` (raw ids, ""
      is padding) plus one ``[batch, events]`` input per interaction feature
      the model reads (raw strings, or float64 numbers for bucketized
      features) -> ``item_ids`` string ``[batch, k]`` and ``scores`` float32
      ``[batch, k]``, best first.
    - ``predict_examples``: ``examples`` string ``[batch]``, serialized
      ``tf.train.SequenceExample`` as the data layer writes them (every event
      is history) -> the same outputs.
    - ``user_embedding``: the inputs of ``serving_default`` -> ``embedding``
      float32 ``[batch, d]``.
    - ``item_embeddings``: ``item_ids`` string ``[n]`` -> ``embeddings``
      float32 ``[n, d]``, ``known`` bool ``[n]``.

    Args:
        run_dir: a training run directory (``model.keras``, ``config.yaml``).
        base_dir: the models directory TF Serving watches (``--model_base_path``).
        version: the version number; default one more than the largest existing.
        k: number of items a recommendation returns.
        exclude_history: never recommend items already in the request.
        prepared_dir: the prepared dataset; default the one in the run's config.
        model_name: the name in the warm-up requests; default the base directory's name.
        warmup: number of warm-up requests (at most 1000; 0 for none).

    Returns:
        The path of the new version directory.

    Raises:
        ExportError: an existing version, a bad option.
        FileNotFoundError: a missing run or prepared dataset.
    """
    from tfsidefuse.training.trainer import load_trained

    run_dir, base_dir = os.fspath(run_dir), os.path.abspath(os.fspath(base_dir))
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise ExportError(f"version must be a positive int, got {version!r}")
    if not isinstance(warmup, int) or not 0 <= warmup <= MAX_WARMUP_RECORDS:
        raise ExportError(f"warmup must be an int in [0, {MAX_WARMUP_RECORDS}], got {warmup!r}")
    if not isinstance(exclude_history, bool):
        raise ExportError(f"exclude_history must be a bool, got {exclude_history!r}")
    if version is not None and os.path.exists(os.path.join(base_dir, str(version))):
        raise ExportError(f"version {version} already exists in {base_dir}; versions are never overwritten")

    prepared = _resolve_prepared(run_dir, None if prepared_dir is None else os.fspath(prepared_dir))
    model = load_trained(run_dir, prepared)
    model.exclude_history = exclude_history
    try:
        graph = ServingGraph(model, prepared, k, item_popularity(prepared))
    except ValueError as err:
        raise ExportError(str(err)) from err

    archive = keras.export.ExportArchive()
    # Not `archive.track(model)`: tracking walks the model's Keras default save
    # signature, traced with float inputs, which our integer-id models reject.
    # The endpoints capture every variable they use; the lookup tables are tracked here.
    for table in graph.tables():
        archive.track(table)
    functions = {
        name: archive.add_endpoint(name, fn, input_signature=[signature])
        for name, (fn, signature) in graph.endpoints().items()
    }

    os.makedirs(base_dir, exist_ok=True)
    _remove_stale_tmp(base_dir)
    if version is None:
        version = (existing_versions(base_dir) or [0])[-1] + 1
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target):
        raise ExportError(f"version {version} already exists in {base_dir}; versions are never overwritten")
    tmp = os.path.join(base_dir, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        archive.write_out(tmp, verbose=False)
        extra = os.path.join(tmp, ASSETS_EXTRA)
        os.makedirs(extra)
        name = model_name or os.path.basename(base_dir.rstrip(os.sep)) or "model"
        with reading(prepared):  # the warm-up requests come from the validation split
            written = write_warmup_file(
                os.path.join(extra, WARMUP_FILE), name, warmup_requests(graph, prepared, warmup)
            )
        if graph.scores_by_dot_product():
            _write_item_embeddings(os.path.join(extra, ITEM_EMBEDDINGS_FILE), model, prepared.vocabulary(ITEM_ID))
        info = {
            "model": type(model.backbone).__name__,
            "version": version,
            "run_dir": os.path.abspath(run_dir),
            "prepared_dir": os.path.abspath(prepared.directory),
            "k": k,
            "exclude_history": exclude_history,
            "max_len": graph.max_len,
            "num_items": graph.num_items,
            "padding_id": PAD_ID,
            "oov_id": OOV_ID,
            # With the bucket boundaries, so that the raw-id lookup can be rebuilt from the export alone
            # (`tfsidefuse.InputEncoder.from_saved_model`).
            "interaction_features": [
                {"name": f.name, "kind": f.kind}
                | ({"boundaries": [float(b) for b in f.boundaries]} if f.kind == "bucketized" else {})
                for f in graph.features
            ],
            "signatures": _signature_info(functions),
            "warmup_requests": written,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tfsidefuse": __version__,
        }
        with open(os.path.join(extra, EXPORT_INFO_FILE), "w") as fh:
            json.dump(info, fh, indent=2)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, target)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ExportError(
                    f"version {version} appeared in {base_dir} during the export; not overwritten"
                ) from err
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s as %s", run_dir, target)
    return target
