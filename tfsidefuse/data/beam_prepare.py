"""The preprocessing as Apache Beam pipelines: ``prepare`` for logs that do not fit in one process.

The steps and their results are those of :func:`tfsidefuse.data.ingest.encode` and
:func:`tfsidefuse.data.prepared.write_prepared` (the same vocabularies with the same id order, the same time
sort and tie rule, leave-one-out split, item-feature table, stats and manifest; the shards hold the same
records in the same order, so the dataset fingerprint is the same), computed so that no process holds the
interaction log:

1. **Read**: every partition file is read by a worker (``csv``/``parquet`` sources); the other sources are
   read by their reader and handed to the workers in chunk files. Events are grouped by user.
2. **k-core** (optional): one pipeline pass per round over the user groups in the temporary directory: item
   counts by a combiner, the items below ``k`` as a side input, users left with fewer than ``k`` events
   dropped; rounds repeat until a pass removes nothing (the fixed point, the same k-core as the pandas loop).
3. **Sort and count**: users with fewer than 3 events are dropped (counted); each user's events are sorted by
   time, ties by file order; combiners count what the vocabularies and the stats need: the first appearance
   of every user and item, the frequency of every feature value, a histogram of the values of quantile-bucketized
   features, the sequence lengths. These small outputs go to the driver, which builds the vocabularies, the
   bucket edges, the item-feature table (from the item table, which is small) and the stats.
4. **Encode and write**: workers encode each user's sequence into one record per split; each shard is
   written by one worker, records in user-id order.

Intermediate data live in a temporary directory (beside the target, or under the pipeline's
``temp_location`` when it is set, e.g. ``gs://bucket/tmp`` on Dataflow) and are removed at the end.

``apache_beam`` is imported only when a pipeline runs: ``pip install "tfsidefuse[beam]"``.
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import time
import uuid

import numpy as np
import pandas as pd

from tfsidefuse.data import partitioned
from tfsidefuse.data.ingest import MIN_EVENTS_PER_USER, SPLITS, _item_feature_table
from tfsidefuse.data.raw_dataset import ITEM, TIME, USER, RawDataset
from tfsidefuse.data.schema import NUM_RESERVED_IDS, OOV_ID, OOV_TOKEN, PAD_TOKEN, DatasetSchema, SchemaError
from tfsidefuse.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Rows per chunk file when a reader's in-memory log is handed to the workers.
CHUNK_ROWS = 200_000
#: Event order of partitioned logs: ``file_index << ORDER_SHIFT | row`` (files of up to 2**40 rows).
ORDER_SHIFT = 40
#: k-core rounds in one pipeline pass (passes repeat until a round removes nothing).
K_CORE_ROUNDS_PER_PASS = 3
#: The sources whose files the workers read themselves.
PARTITIONED_SOURCES = partitioned.FORMATS


def import_beam():
    """``apache_beam``, or a :class:`ConfigError` that says how to install it."""
    try:
        import apache_beam as beam
    except ImportError as err:
        raise ConfigError(
            f"prepare with a Beam runner needs apache-beam ({err}); install it with: pip install 'tfsidefuse[beam]'"
        ) from None
    return beam


def pipeline_options(runner: str = "DirectRunner", options: dict | list | None = None):
    """Beam ``PipelineOptions`` for a runner plus pass-through options.

    Args:
        runner: a Beam runner name (``DirectRunner``, ``DataflowRunner``, ``FlinkRunner``, ``SparkRunner``, ...).
        options: ``{"key": value}`` (``True`` gives a bare ``--key``) or command-line flags
            (``["--project=p", "--region", "r"]``), passed to Beam unchanged.
    """
    import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    if options is None:
        flags = []
    elif isinstance(options, dict):
        flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in options.items()]
    else:
        flags = [str(f) for f in options]
    if not isinstance(runner, str) or not runner:
        raise ConfigError(f"runner must be a Beam runner name such as 'DirectRunner', got {runner!r}")
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(runner)
    except (ValueError, ImportError) as err:
        raise ConfigError(f"runner {runner!r}: {err}") from None
    return PipelineOptions([*flags, f"--runner={runner}"])


# ---------------------------------------------------------------------------------------------------------------------
# What the workers need to know: the plan
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """The picklable description of a log that every worker gets.

    ``features`` lists the interaction features as ``(name, column, kind)``, kind one of ``categorical``,
    ``numeric`` (bucketized from a column) or ``time_gap``; an event holds one value per feature.
    """

    fmt: str  # "pickle" (chunks of a reader's log), "csv" or "parquet"
    has_time: bool
    features: list[tuple[str, str, str]]
    roles: dict[str, str] | None = None
    header: list[str] | None = None


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _read_events(entry: tuple[int, str], plan: _Plan):
    """The events of one input file, grouped by user: ``(user, [(order, item, time, values), ...])``.

    Grouping within the file first sends one element per user and file through the shuffle instead of one per
    event."""
    index, path = entry
    if plan.fmt == "pickle":
        with _open_read(path) as fh:
            frame = pickle.load(fh)
        base = index * CHUNK_ROWS
    else:
        frame = partitioned.read_partition(path, plan.fmt, plan.roles, plan.header)
        base = index << ORDER_SHIFT
    n = len(frame)
    users = frame[USER].astype(str).tolist()
    items = frame[ITEM].astype(str).tolist()
    times = pd.to_numeric(frame[TIME]).tolist() if plan.has_time else [None] * n
    columns = []
    for _, column, kind in plan.features:
        if kind == "categorical":
            col = frame[column]
            values = col.astype(str).where(col.notna(), None).tolist()
            columns.append([None if _missing(v) else v for v in values])
        elif kind == "numeric":
            columns.append(pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64).tolist())
        else:
            columns.append([None] * n)
    groups: dict[str, list] = {}
    for j in range(n):
        event = (base + j, items[j], times[j], tuple(c[j] for c in columns))
        group = groups.get(users[j])
        if group is None:
            groups[users[j]] = [event]
        else:
            group.append(event)
    yield from groups.items()


def _as_list(kv):
    """A user's events from its per-file groups."""
    return kv[0], [event for part in kv[1] for event in part]


def _count_events(record) -> int:
    return len(record[1])


def _items_of(record):
    return [event[1] for event in record[1]]


def _k_core_round(record, bad_items, k: int):
    """Drops the events of items below ``k``; drops the user if fewer than ``k`` events are left."""
    user, events = record
    kept = [e for e in events if e[1] not in bad_items] if bad_items else events
    if len(kept) >= k:
        yield user, kept


def _time_key(event):
    t = event[2]
    nan = t != t
    return (nan, 0.0 if nan else t, event[0])


def _finish_user(record, plan: _Plan):
    """A user's events in chronological order (ties: file order) with time gaps, or a ``short`` tag."""
    import apache_beam as beam

    user, events = record
    if len(events) < MIN_EVENTS_PER_USER:
        yield beam.pvalue.TaggedOutput("short", 1)
        return
    events = sorted(events, key=_time_key if plan.has_time else (lambda e: e[0]))
    first = min(e[0] for e in events)
    items = [e[1] for e in events]
    values = []
    for f, (_, _, kind) in enumerate(plan.features):
        if kind == "time_gap":
            times = [float(e[2]) for e in events]
            values.append([math.nan] + [b - a for a, b in zip(times, times[1:])])
        else:
            values.append([e[3][f] for e in events])
    yield user, first, items, values


def _user_first(record):
    return record[1], record[0]


def _item_firsts(record):
    _, first, items, _ = record
    seen = set()
    for pos, item in enumerate(items):
        if item not in seen:
            seen.add(item)
            yield item, (first, pos)


def _feature_values(record, counted: tuple[int, ...], kinds: tuple[str, ...]):
    for f in counted:
        numeric = kinds[f] != "categorical"
        for v in record[3][f]:
            if numeric:
                if math.isfinite(v):
                    yield f, v
            elif v is not None:
                yield f, v


def _length(record) -> int:
    return len(record[2])


def _encode(value) -> str:
    """One intermediate record as a line of text (pickle, base64): text files need no extra codec."""
    return base64.b64encode(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")


def _decode(line: str):
    return pickle.loads(base64.b64decode(line))


def _to_json(value) -> str:
    return json.dumps(value)


def _write_json(pcoll, prefix: str, label: str) -> None:
    """Writes a small PCollection as JSON lines (read by the driver)."""
    import apache_beam as beam

    pcoll | f"Json-{label}" >> beam.Map(_to_json) | f"Write-{label}" >> beam.io.WriteToText(prefix)


class _Encoder:
    """Encodes a user's sorted events into ``((split, shard), (user_id, record bytes))`` for every split.

    The vocabularies are read from ``lookup_path`` on first use, once per worker process.
    """

    def __init__(self, lookup_path: str, plan: _Plan, num_shards: int) -> None:
        self.lookup_path = lookup_path
        self.plan = plan
        self.num_shards = num_shards
        self._lookup = None

    def __call__(self, record):
        from tfsidefuse.data.prepared import sequence_example

        if self._lookup is None:
            with _open_read(self.lookup_path) as fh:
                self._lookup = pickle.load(fh)
        lookup = self._lookup
        user, _, items, values = record
        uid = lookup["user_id"][user]
        item_index = lookup["item_id"]
        item_ids = [item_index[i] for i in items]
        encoded = {}
        for f, (name, _, kind) in enumerate(self.plan.features):
            if kind == "categorical":
                index = lookup[name]
                encoded[name] = [OOV_ID if v is None else index.get(v, OOV_ID) for v in values[f]]
            else:
                edges = lookup[name]
                encoded[name] = [
                    NUM_RESERVED_IDS + bisect.bisect_right(edges, v) if math.isfinite(v) else OOV_ID for v in values[f]
                ]
        shard = (uid - NUM_RESERVED_IDS) % self.num_shards
        n = len(item_ids)
        for cut, split in enumerate(SPLITS[::-1]):  # test: all events, valid: all but one, train: all but two
            end = n - cut
            feats = {name: ids[:end] for name, ids in encoded.items()}
            yield (split, shard), (uid, sequence_example(uid, item_ids[:end], feats))


def _write_shard(kv, shards_dir: str, num_shards: int):
    """Writes one shard, records in user-id order; returns ``(split, records)``."""
    import tensorflow as tf

    (split, shard), records = kv
    records = sorted(records, key=lambda r: r[0])
    path = _join(shards_dir, split, _shard_name(shard, num_shards))
    with tf.io.TFRecordWriter(path) as writer:
        for _, data in records:
            writer.write(data)
    return split, len(records)


def _shard_name(shard: int, num_shards: int) -> str:
    return f"part-{shard:05d}-of-{num_shards:05d}.tfrecord"


# ---------------------------------------------------------------------------------------------------------------------
# Files: local paths or any file system Beam knows (gs://, s3://, hdfs://)
# ---------------------------------------------------------------------------------------------------------------------


def _remote(path: str) -> bool:
    return "://" in path


def _join(*parts: str) -> str:
    if _remote(parts[0]):
        return "/".join([parts[0].rstrip("/"), *parts[1:]])
    return os.path.join(*parts)


def _open_read(path: str):
    if _remote(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.open(path)
    return open(path, "rb")


def _open_write(path: str):
    if _remote(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.create(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return open(path, "wb")


def _match(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def _read_json_lines(prefix: str) -> list:
    out = []
    for path in _match(prefix + "*"):
        with _open_read(path) as fh:
            out.extend(json.loads(line) for line in fh.read().decode().splitlines() if line.strip())
    return out


def _make_dirs(path: str) -> None:
    if not _remote(path):
        os.makedirs(path, exist_ok=True)


def _remove_tree(path: str) -> None:
    if _remote(path):
        from apache_beam.io.filesystems import FileSystems

        if FileSystems.exists(path):
            FileSystems.delete([path])
    else:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# Quantiles from a histogram, exactly as numpy.quantile on the expanded values
# ---------------------------------------------------------------------------------------------------------------------


def quantiles_from_histogram(values, counts, qs) -> np.ndarray:
    """``np.quantile(expanded, qs)`` (linear method) for the sample in which ``values[i]`` occurs
    ``counts[i]`` times, computed from the histogram with the same floating-point operations.

    Args:
        values: distinct finite numbers, any order.
        counts: how often each occurs (positive ints).
        qs: quantile levels in ``[0, 1]``.
    """
    order = np.argsort(values, kind="stable")
    values = np.asarray(values, dtype=np.float64)[order]
    cum = np.cumsum(np.asarray(counts, dtype=np.int64)[order])
    n = int(cum[-1])
    qs = np.asarray(qs, dtype=np.float64)
    virtual = (n - 1) * qs
    previous = np.floor(virtual)
    at_end = virtual >= n - 1
    prev_index = np.where(at_end, n - 1, previous).astype(np.int64)
    next_index = np.where(at_end, n - 1, previous + 1).astype(np.int64)
    a = values[np.searchsorted(cum, prev_index, side="right")]
    b = values[np.searchsorted(cum, next_index, side="right")]
    # numpy takes index -1 at the end, so its gamma is virtual + 1 there (a == b, so the value is a).
    gamma = np.asarray(virtual - np.where(at_end, -1, prev_index), dtype=np.float64)
    diff = b - a
    out = a + diff * gamma
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), out)


# ---------------------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------------------


def _run(pipeline, what: str) -> None:
    """Runs a pipeline to completion; a user error raised in a worker (a malformed partition) is raised again
    as itself, with its message, instead of the runner's wrapper."""
    start = time.perf_counter()
    try:
        result = pipeline.run()
        state = result.wait_until_finish()
    except Exception as err:
        _reraise_user_error(err)
        raise
    if state is not None and str(state).upper().rsplit(".", 1)[-1] not in ("DONE", "RUNNING"):
        raise RuntimeError(f"Beam pipeline ended in state {state}")
    logger.info("Beam pipeline %s: %.1f s", what, time.perf_counter() - start)


def _plan_and_inputs(ds_cfg, raw: RawDataset | None, specs, temp: str) -> tuple[_Plan, list[tuple[int, str]]]:
    """The plan and the input files: the partitions, or a reader's log written as chunk files."""
    features = []
    for spec in specs:
        if spec.level != "interaction":
            continue
        if spec.transform == "time_gap":
            features.append((spec.name, TIME, "time_gap"))
        elif spec.kind == "bucketized":
            features.append((spec.name, spec.source_column, "numeric"))
        else:
            features.append((spec.name, spec.source_column, "categorical"))
    if raw is None:
        roles = partitioned.column_roles(ds_cfg.columns)
        files = partitioned.list_partitions(ds_cfg.path)
        header = partitioned.read_header(files[0], ds_cfg.source)
        plan = _Plan(ds_cfg.source, roles[TIME] in header, features, roles, header)
        return plan, list(enumerate(files))
    needed = [USER, ITEM] + ([TIME] if raw.has_time else [])
    needed += [c for _, c, kind in features if kind != "time_gap" and c not in needed]
    frame = raw.interactions[needed]
    inputs = []
    for index, start in enumerate(range(0, len(frame), CHUNK_ROWS)):
        path = _join(temp, "input", f"chunk-{index:05d}.pkl")
        with _open_write(path) as fh:
            pickle.dump(frame.iloc[start : start + CHUNK_ROWS], fh, protocol=pickle.HIGHEST_PROTOCOL)
        inputs.append((index, path))
    return _Plan("pickle", raw.has_time, features), inputs


def _vocabulary_from_counts(name: str, counts: dict[str, int]) -> list[str]:
    tokens = sorted(counts, key=lambda t: (-counts[t], t))
    clash = {PAD_TOKEN, OOV_TOKEN} & set(tokens)
    if clash:
        raise SchemaError(f"reserved token(s) {sorted(clash)} found among the values of {name!r}")
    return [PAD_TOKEN, OOV_TOKEN, *tokens]


def run_beam_prepare(
    ds_cfg,
    directory: str,
    *,
    raw: RawDataset | None = None,
    runner: str = "DirectRunner",
    options: dict | list | None = None,
    overwrite: bool = False,
    raw_inputs: dict[str, str] | None = None,
    dataset_config: dict | None = None,
    temp_dir: str | None = None,
) -> str:
    """Writes the prepared dataset of a dataset config section with Beam pipelines.

    Args:
        ds_cfg: the :class:`~tfsidefuse.config.DatasetConfig` (``max_len``, ``k_core``, ``features``,
            ``num_shards``; ``path`` and ``columns`` of a ``csv``/``parquet`` source).
        directory: the prepared directory to write.
        raw: the log of a reader source (``demo``, ``s3rec``, ``recbole``, ``tfds``); None for ``csv`` and
            ``parquet``, whose files the workers read.
        runner: the Beam runner.
        options: pass-through pipeline options (see :func:`pipeline_options`).
        overwrite: replace an existing prepared dataset.
        raw_inputs, dataset_config: recorded in the manifest, as by :func:`~tfsidefuse.data.prepared.write_prepared`.
        temp_dir: where the intermediate files go; default: the pipeline's ``temp_location`` if set, else a
            temporary directory beside ``directory``.

    Returns:
        The directory path.

    Raises:
        DataError: a partition is malformed (the message names the file).
        SchemaError: as :func:`~tfsidefuse.data.ingest.encode`.
    """
    beam = import_beam()
    from tfsidefuse.data.prepared import (
        _temp_prefix,
        build_prepared_dir,
        remove_stale_temp_dirs,
        write_metadata,
    )

    opts = pipeline_options(runner, options)
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"prepared dataset directory already exists: {directory} (use overwrite=True)")
    num_shards = ds_cfg.num_shards
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")

    # Feature declarations, as encode() selects them.
    if raw is None:
        roles = partitioned.column_roles(ds_cfg.columns)
        files = partitioned.list_partitions(ds_cfg.path)
        header = partitioned.read_header(files[0], ds_cfg.source)
        partitioned.check_header(files[0], header, roles)
        declared_list = partitioned.partition_features(header, roles)
        name = ds_cfg.name or os.path.basename(os.path.dirname(os.path.abspath(files[0])))
        items_frame = None
    else:
        declared_list = raw.features
        name = raw.name
        items_frame = raw.items
    declared = {f.name: f for f in declared_list}
    if ds_cfg.features is not None:
        unknown = [n for n in ds_cfg.features if n not in declared]
        if unknown:
            raise SchemaError(f"dataset {name!r}: unknown feature(s) {unknown}; declared: {sorted(declared)}")
        declared = {n: declared[n] for n in ds_cfg.features}
    specs = [dataclasses.replace(f) for f in declared.values()]

    pipeline_temp = opts.get_all_options().get("temp_location")
    if temp_dir is None and pipeline_temp:
        temp = _join(pipeline_temp, f"tfsidefuse-prepare-{uuid.uuid4().hex[:12]}")
    else:
        parent = temp_dir or os.path.dirname(directory)
        os.makedirs(parent, exist_ok=True)
        remove_stale_temp_dirs(directory)
        temp = tempfile.mkdtemp(prefix=f"{_temp_prefix(directory, 'tmp')}{os.getpid()}-beam-", dir=parent)
    try:
        plan, inputs = _plan_and_inputs(ds_cfg, raw, specs, temp)

        def read_users(p, source):
            if source is None:
                events = (
                    p
                    | "Inputs" >> beam.Create(inputs)
                    | "Spread" >> beam.Reshuffle()
                    | "Read" >> beam.FlatMap(_read_events, plan)
                )
                return events, events | "ByUser" >> beam.GroupByKey() | "AsList" >> beam.Map(_as_list)
            return None, p | "ReadUsers" >> beam.io.ReadFromText(source + "*") | "DecodeUsers" >> beam.Map(_decode)

        # One pipeline per pass: (with k-core) K_CORE_ROUNDS_PER_PASS rounds of filtering, then sort and count.
        # A pass whose last round removed nothing reached the fixed point; otherwise the next pass starts from
        # the user groups it left and its counts are discarded.
        kinds = tuple(kind for _, _, kind in plan.features)
        counted = tuple(
            f
            for f, spec in enumerate(s for s in specs if s.level == "interaction")
            if kinds[f] == "categorical" or spec.boundaries is None
        )
        k = ds_cfg.k_core
        source = None
        pass_index = 0
        while True:
            out = _join(temp, f"pass-{pass_index:03d}")
            p = beam.Pipeline(options=opts)
            events, users = read_users(p, source)
            if events is not None:
                raw_total = events | "Sizes" >> beam.Map(_count_events) | "CountRaw" >> beam.CombineGlobally(sum)
                _write_json(raw_total, _join(temp, "raw-count"), "Raw")
            if k:
                previous = users
                for r in range(K_CORE_ROUNDS_PER_PASS):
                    bad = (
                        previous
                        | f"Items{r}" >> beam.FlatMap(_items_of)
                        | f"ItemCounts{r}" >> beam.combiners.Count.PerElement()
                        | f"Below{r}" >> beam.Filter(lambda kv, k=k: kv[1] < k)
                        | f"BadItems{r}" >> beam.Keys()
                        | f"AsSet{r}" >> beam.combiners.ToSet()
                    )
                    last, previous = (
                        previous,
                        previous | f"Filter{r}" >> beam.FlatMap(_k_core_round, beam.pvalue.AsSingleton(bad), k),
                    )
                users = previous
                users | "EncodeUsers" >> beam.Map(_encode) | "WriteUsers" >> beam.io.WriteToText(_join(out, "users"))
                for label, pcoll in (("before", last), ("after", users)):
                    total = (
                        pcoll | f"Len-{label}" >> beam.Map(_count_events) | f"Sum-{label}" >> beam.CombineGlobally(sum)
                    )
                    _write_json(total, _join(out, label), label)
            finished = users | "Finish" >> beam.FlatMap(_finish_user, plan).with_outputs("short", main="users")
            records = finished.users
            records | "EncodeSorted" >> beam.Map(_encode) | "WriteSorted" >> beam.io.WriteToText(_join(out, "sorted"))
            outputs = {
                "short": finished.short | "CountShort" >> beam.combiners.Count.Globally(),
                "user-firsts": records | "UserFirsts" >> beam.Map(_user_first),
                "item-firsts": records
                | "ItemFirsts" >> beam.FlatMap(_item_firsts)
                | "MinFirst" >> beam.CombinePerKey(min),
                "values": records
                | "Values" >> beam.FlatMap(_feature_values, counted, kinds)
                | "CountValues" >> beam.combiners.Count.PerElement(),
                "lengths": records
                | "Lengths" >> beam.Map(_length)
                | "CountLengths" >> beam.combiners.Count.PerElement(),
            }
            for label, pcoll in outputs.items():
                _write_json(pcoll, _join(out, "counts", label), label)
            _run(p, f"pass {pass_index + 1} (read, k-core, sort, count)")
            pass_index += 1
            if not k:
                break
            before = sum(_read_json_lines(_join(out, "before")))
            after = sum(_read_json_lines(_join(out, "after")))
            logger.info("k-core pass %d: last round %d -> %d events", pass_index, before, after)
            if after == before:
                break
            source = _join(out, "users")
        sorted_prefix = _join(out, "sorted")
        raw_count = sum(_read_json_lines(_join(temp, "raw-count")))
        if raw_count == 0:
            raise SchemaError(f"dataset {name!r}: no interactions")

        # The driver: vocabularies, bucket edges, item tables, stats.
        counts_dir = _join(out, "counts")
        short = sum(_read_json_lines(_join(counts_dir, "short")))
        user_tokens = [u for _, u in sorted(_read_json_lines(_join(counts_dir, "user-firsts")))]
        if not user_tokens:
            raise SchemaError(f"dataset {name!r}: no user has {MIN_EVENTS_PER_USER} or more interactions")
        item_firsts = sorted(_read_json_lines(_join(counts_dir, "item-firsts")), key=lambda kv: tuple(kv[1]))
        vocabularies: dict[str, list[str]] = {
            "user_id": [PAD_TOKEN, OOV_TOKEN, *user_tokens],
        }
        item_tokens = [item for item, _ in item_firsts]
        clash = {PAD_TOKEN, OOV_TOKEN} & set(item_tokens)
        if clash:
            raise SchemaError(f"reserved token(s) {sorted(clash)} found among the values of {ITEM!r}")
        vocabularies["item_id"] = [PAD_TOKEN, OOV_TOKEN, *item_tokens]
        value_counts: dict[int, dict] = {}
        for (f, value), count in _read_json_lines(_join(counts_dir, "values")):
            value_counts.setdefault(f, {})[value] = count
        lookup: dict[str, dict | list] = {
            "user_id": {u: i for i, u in enumerate(vocabularies["user_id"]) if i >= NUM_RESERVED_IDS},
            "item_id": {t: i for i, t in enumerate(vocabularies["item_id"]) if i >= NUM_RESERVED_IDS},
        }
        item_feature_tables: dict[str, np.ndarray] = {}
        f = 0
        for spec in specs:
            if spec.level != "interaction":
                item_feature_tables[spec.name] = _item_feature_table(
                    items_frame, vocabularies["item_id"], spec, vocabularies
                )
                continue
            kind = kinds[f]
            if kind == "categorical":
                vocab = _vocabulary_from_counts(spec.name, value_counts.get(f, {}))
                vocabularies[spec.name] = vocab
                spec.vocab_size = len(vocab)
                lookup[spec.name] = {t: i for i, t in enumerate(vocab) if i >= NUM_RESERVED_IDS}
            else:
                if spec.boundaries is None:
                    hist = value_counts.get(f, {})
                    if not hist:
                        raise SchemaError(f"feature {spec.name!r}: no finite value to compute bucket boundaries from")
                    levels = np.linspace(0.0, 1.0, spec.num_buckets + 1)[1:-1]
                    qs = quantiles_from_histogram(list(hist), list(hist.values()), levels)
                    spec.boundaries = [float(b) for b in np.unique(qs)]
                spec.vocab_size = len(spec.boundaries) + 1 + NUM_RESERVED_IDS
                lookup[spec.name] = list(spec.boundaries)
            f += 1
        lengths = {int(n): int(c) for n, c in _read_json_lines(_join(counts_dir, "lengths"))}
        num_users = len(vocabularies["user_id"])
        num_items = len(vocabularies["item_id"])
        schema = DatasetSchema(
            name=name, features=specs, num_items=num_items, num_users=num_users, max_len=ds_cfg.max_len
        )
        total = sum(n * c for n, c in lengths.items())
        users = num_users - NUM_RESERVED_IDS
        stats = {
            "raw_interactions": int(raw_count),
            "users": int(users),
            "items": int(num_items - NUM_RESERVED_IDS),
            "interactions": int(total),
            "avg_length": round(total / users, 4),
            "max_length": int(max(lengths)),
            "dropped_short_users": int(short),
            "train_targets": int(sum((n - 3) * c for n, c in lengths.items())),
            "train_sequences": int(sum(c for n, c in lengths.items() if n >= 4)),
            "valid_examples": int(users),
            "test_examples": int(users),
            "length_counts": {str(n): lengths[n] for n in sorted(lengths)},
        }
        if short:
            logger.warning("dropped %d users with fewer than %d events", short, MIN_EVENTS_PER_USER)
        lookup_path = _join(temp, "lookup.pkl")
        with _open_write(lookup_path) as fh:
            pickle.dump(lookup, fh, protocol=pickle.HIGHEST_PROTOCOL)

        # Encode and write the shards.
        shards_dir = _join(temp, "shards")
        for split in SPLITS:
            _make_dirs(_join(shards_dir, split))
        p = beam.Pipeline(options=opts)
        (
            p
            | "ReadSorted" >> beam.io.ReadFromText(sorted_prefix + "*")
            | "DecodeSorted" >> beam.Map(_decode)
            | "Encode" >> beam.FlatMap(_Encoder(lookup_path, plan, num_shards))
            | "ByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.Map(_write_shard, shards_dir, num_shards)
        )
        _run(p, "encode and write")

        def fill(tmp: str) -> None:
            for split in SPLITS:
                os.makedirs(os.path.join(tmp, split))
                for shard in range(num_shards):
                    name_ = _shard_name(shard, num_shards)
                    src = _join(shards_dir, split, name_)
                    dst = os.path.join(tmp, split, name_)
                    if _remote(src) or os.path.exists(src):
                        with _open_read(src) as fin, open(dst, "wb") as fout:
                            shutil.copyfileobj(fin, fout, 1 << 20)
                    else:
                        open(dst, "wb").close()  # a shard without users: an empty file, as write_prepared
                stats[f"{split}_records"] = int(users)
            write_metadata(tmp, vocabularies, item_feature_tables, stats, schema)

        return build_prepared_dir(
            directory, fill, overwrite=overwrite, raw_inputs=raw_inputs, dataset_config=dataset_config
        )
    finally:
        _remove_tree(temp)


def _reraise_user_error(err: Exception) -> None:
    """Raises the tfsidefuse user error whose ``Name: message`` a runner's exception text carries, if any."""
    text = str(err)
    match = re.search(r"\b(DataError|SchemaError|ConfigError): (.+?)(?: \[while running|\n|$)", text)
    if match:
        kinds = {"DataError": DataError, "SchemaError": SchemaError, "ConfigError": ConfigError}
        raise kinds[match.group(1)](match.group(2).strip().strip("'\"")) from None
