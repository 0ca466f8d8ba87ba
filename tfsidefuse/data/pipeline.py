"""``tf.data`` input pipelines over a prepared dataset.

:func:`make_dataset` checks its arguments (the ``_check_*`` functions) and builds a split's pipeline in four
steps, each a function of this module:

1. reading (:func:`_read_records`): shard files -> parallel interleave -> parse -> (cache) -> (shuffle);
2. examples (:func:`_to_examples`): the parsed records become the examples of the objective, truncated to the
   most recent ``max_len`` events;
3. batching (:func:`_batch_examples`): left-padded batches (by length buckets, optionally), with their count;
4. finishing (:func:`_finish`): (cache) -> (repeat) -> sharding by data (tf.distribute) -> prefetch.

Each batch is ``(inputs, labels)``. ``inputs`` is a dict with ``item_ids`` and one
entry per interaction-level feature, all int32 ``[batch, T]``, left-padded with 0
(the most recent event is the last column). ``T`` is the longest sequence of the
batch (or ``max_len`` with ``pad_to_max_len``). The ``objective`` argument picks
the examples: one of the three training objectives (``training.objective`` of a
config) or the held-out layout ``"eval"``:

* ``"all_positions"`` (training default): one example per user; the input is
  the training sequence without its last event and ``labels[t]`` is the event
  after position ``t`` (int32 ``[batch, T]``, 0 where there is no target).
* ``"all_targets"``: as ``"all_positions"``, but a training sequence with more
  than ``max_len`` targets becomes several examples, so that every target is
  trained on once per epoch, as with ``"prefix"``, instead of only the last
  ``max_len``: windows of ``max_len`` events ending every ``max_len // 2``
  targets from the end, each with labels on its newest ``max_len // 2`` slots
  only (the oldest window keeps all of its labels). Every target thus sees at
  least half a window of history, as it would in a prefix of ``max_len``
  events (see :func:`target_windows`).
* ``"prefix"``: every prefix of the training sequence is an example with its
  next event as the label (int32 ``[batch]``), as in the papers' RecBole runs.
* ``"eval"`` (default of the validation and test splits): one example per
  user; the input is the whole history before the split's target and the
  label is the target (int32 ``[batch]``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import tensorflow as tf

from tfsidefuse.config import OBJECTIVES
from tfsidefuse.data.manifest import check_prepared
from tfsidefuse.data.prepared import ITEM_ID, USER_ID, PreparedDataset
from tfsidefuse.data.schema import DatasetSchema
from tfsidefuse.errors import PreparedDataError

#: Example layouts of :func:`make_dataset`: the training objectives (``training.objective``) and ``"eval"``.
LAYOUTS = (*OBJECTIVES, "eval")
#: Objectives with a label at every position (the loss at every position).
POSITION_OBJECTIVES = ("all_positions", "all_targets")
#: Model input key of the item-id sequence.
ITEM_IDS = "item_ids"


def parse_spec(schema: DatasetSchema) -> tuple[dict, dict]:
    """Context and sequence parse specs of the records, derived from the schema."""
    context = {USER_ID: tf.io.FixedLenFeature([], tf.int64)}
    sequence = {ITEM_ID: tf.io.FixedLenSequenceFeature([], tf.int64)}
    for f in schema.interaction_features:
        sequence[f.name] = tf.io.FixedLenSequenceFeature([], tf.int64)
    return context, sequence


def parse_sequence_examples(serialized: tf.Tensor, schema: DatasetSchema) -> dict[str, tf.Tensor]:
    """Parses one serialized ``SequenceExample`` into 1-D int32 tensors (plus ``user_id``)."""
    context_spec, sequence_spec = parse_spec(schema)
    context, sequences = tf.io.parse_single_sequence_example(serialized, context_spec, sequence_spec)
    out = {name: tf.cast(value, tf.int32) for name, value in sequences.items()}
    out[USER_ID] = tf.cast(context[USER_ID], tf.int32)
    return out


def _window(sequences: dict[str, tf.Tensor], start, stop, max_len: int) -> dict[str, tf.Tensor]:
    """Events ``start:stop`` of every sequence, keeping the most recent ``max_len``.

    The item sequence is renamed from the record key ``item_id`` to the model
    input key ``item_ids``.
    """
    begin = tf.maximum(start, stop - max_len)
    return {(ITEM_IDS if name == ITEM_ID else name): seq[begin:stop] for name, seq in sequences.items()}


def _left_pad_batch(
    dataset: tf.data.Dataset,
    batch_size: int,
    max_len: int | None,
    drop_remainder: bool,
    bucket_boundaries: list[int] | None = None,
    bucket_sizes: list[int] | None = None,
) -> tf.data.Dataset:
    """Batches variable-length examples, padding on the left with 0.

    ``padded_batch`` pads on the right, so sequences are reversed before and
    after. With ``bucket_boundaries``, examples are batched with others of
    similar length (and, when ``max_len`` is given, padded to their bucket's
    upper bound instead of ``max_len``, so that only a few shapes occur), in
    batches of ``bucket_sizes[i]`` examples for bucket ``i`` (default
    ``batch_size``).
    """

    def reverse_example(inputs, labels):
        inputs = {k: tf.reverse(v, [0]) for k, v in inputs.items()}
        if labels.shape.rank == 1:
            labels = tf.reverse(labels, [0])
        return inputs, labels

    def reverse_batch(inputs, labels):
        inputs = {k: tf.reverse(v, [1]) for k, v in inputs.items()}
        if labels.shape.rank == 2:
            labels = tf.reverse(labels, [1])
        return inputs, labels

    label_shape = dataset.element_spec[1].shape
    seq_shape = [max_len] if max_len else [None]
    padded_shapes = (
        {k: seq_shape for k in dataset.element_spec[0]},
        seq_shape if label_shape.rank == 1 else [],
    )
    dataset = dataset.map(reverse_example, num_parallel_calls=tf.data.AUTOTUNE)
    if bucket_boundaries:
        dataset = dataset.bucket_by_sequence_length(
            lambda inputs, labels: tf.shape(inputs[ITEM_IDS])[0],
            # Bucket i holds lengths in [b_{i-1} + 1, b_i]: tf.data's boundaries are exclusive upper bounds.
            bucket_boundaries=[b + 1 for b in bucket_boundaries],
            bucket_batch_sizes=bucket_sizes or [batch_size] * (len(bucket_boundaries) + 1),
            padded_shapes=({k: [None] for k in dataset.element_spec[0]}, [None] if label_shape.rank == 1 else []),
            pad_to_bucket_boundary=bool(max_len),
            drop_remainder=drop_remainder,
        )
    else:
        dataset = dataset.padded_batch(batch_size, padded_shapes=padded_shapes, drop_remainder=drop_remainder)
    return dataset.map(reverse_batch, num_parallel_calls=tf.data.AUTOTUNE)


def length_buckets(max_len: int, count: int = 6) -> list[int]:
    """Bucket upper bounds for ``max_len``: geometric from 2, the last one ``max_len``.

    For the Amazon data (median length 6, maximum 50) and ``max_len`` 50 this
    gives ``[2, 4, 7, 14, 26, 50]``: batches are padded to at most the bucket's
    bound, which bounds the padding at about half of each batch.
    """
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    bounds = sorted({min(max_len, max(1, round(2 * (max_len / 2) ** (i / (count - 1))))) for i in range(count)})
    return [b for b in bounds if b < max_len] + [max_len]


def _example_lengths(prepared: PreparedDataset, split: str, objective: str, max_len: int) -> dict[int, int] | None:
    """Input length -> number of examples of an objective, from the prepared length statistics (None if unknown)."""
    counts = prepared.stats.get("length_counts")
    if counts is None:
        return None
    shift = {"train": 2, "valid": 1, "test": 0}[split]
    lengths: dict[int, int] = {}
    for n, users in counts.items():
        length = int(n) - shift
        if objective == "prefix":
            for t in range(1, length):
                lengths[min(t, max_len)] = lengths.get(min(t, max_len), 0) + users
        elif objective == "all_targets" and length >= 2:
            for _, stop, _ in target_windows(length - 1, max_len):
                size = min(stop, max_len)
                lengths[size] = lengths.get(size, 0) + users
        elif length >= 2:
            lengths[min(length - 1, max_len)] = lengths.get(min(length - 1, max_len), 0) + users
    return lengths


def target_windows(targets: int, max_len: int) -> list[tuple[int, int, int]]:
    """The windows ``all_targets`` cuts a training sequence into, newest first.

    A sequence of ``targets + 1`` events has targets ``1..targets`` (event ``t`` is the target of the events before
    it). Window ``j`` feeds the events ``[stop_j - max_len, stop_j)`` (from 0 for the oldest) and trains on the
    targets ``first_j..stop_j``; ``stop_0 = targets`` and each next window ends ``max_len // 2`` targets earlier,
    until one reaches back to the first event. Every target is in exactly one window, with at least
    ``max_len - max_len // 2`` events of history (or all of its history, if shorter).

    Returns:
        ``(first target, last target, events before the first labelled slot)`` per window; the window's input
        length is ``min(last target, max_len)``.
    """
    step = max(1, max_len // 2)
    windows = []
    stop = targets
    while stop > max_len:
        windows.append((stop - step + 1, stop, max_len - step))
        stop -= step
    if stop >= 1:
        windows.append((1, stop, 0))
    return windows


def count_examples(prepared: PreparedDataset, split: str, objective: str, max_len: int | None = None) -> int | None:
    """Examples one pass of a split yields for an objective (one of :data:`LAYOUTS`), from the prepared length
    statistics (None if unknown)."""
    lengths = _example_lengths(prepared, split, objective, max_len or prepared.schema.max_len)
    return None if lengths is None else sum(lengths.values())


def _bucket_of(length: int, bucket_boundaries: list[int] | None) -> int:
    bounds = bucket_boundaries or []
    return next((i for i, b in enumerate(bounds) if length <= b), len(bounds))


def bucket_batch_sizes(
    prepared: PreparedDataset, split: str, objective: str, batch_size: int, max_len: int, bucket_boundaries: list[int]
) -> list[int]:
    """Examples per batch in each length bucket (one more bucket than bounds, for tf.data's open last bucket).

    With the loss at every position (``all_positions``, ``all_targets``), a batch's loss is the
    mean over its real slots, so equal-sized batches of short sequences would
    weigh each of their slots more than batches of long ones. Batches are
    therefore sized to hold about as many slots as a random batch of
    ``batch_size`` sequences: ``batch_size * mean length / mean length in the
    bucket``. Every other objective has one loss per example and keeps
    ``batch_size`` (as does a dataset without length statistics).
    """
    sizes = [batch_size] * (len(bucket_boundaries) + 1)
    lengths = _example_lengths(prepared, split, objective, max_len) if objective in POSITION_OBJECTIVES else None
    if not lengths:
        return sizes
    slots: dict[int, int] = {}
    examples: dict[int, int] = {}
    for length, n in lengths.items():
        bucket = _bucket_of(length, bucket_boundaries)
        slots[bucket] = slots.get(bucket, 0) + length * n
        examples[bucket] = examples.get(bucket, 0) + n
    mean_length = sum(slots.values()) / sum(examples.values())
    for bucket, n in examples.items():
        sizes[bucket] = max(1, round(batch_size * mean_length / (slots[bucket] / n)))
    return sizes


def count_batches(
    prepared: PreparedDataset,
    split: str,
    objective: str,
    batch_size: int,
    max_len: int,
    drop_remainder: bool = False,
    bucket_boundaries: list[int] | None = None,
    bucket_sizes: list[int] | None = None,
) -> int | None:
    """Batches one pass of :func:`make_dataset` yields (None if the dataset has no length statistics).

    ``bucket_sizes`` are the buckets' batch sizes when already known (by
    default :func:`bucket_batch_sizes`).
    """
    lengths = _example_lengths(prepared, split, objective, max_len)
    if lengths is None:
        return None
    sizes = bucket_sizes or (
        bucket_batch_sizes(prepared, split, objective, batch_size, max_len, bucket_boundaries)
        if bucket_boundaries
        else [batch_size]
    )
    groups: dict[int, int] = {}
    for length, examples in lengths.items():
        bucket = _bucket_of(length, bucket_boundaries)
        groups[bucket] = groups.get(bucket, 0) + examples
    if drop_remainder:
        return sum(n // sizes[b] for b, n in groups.items())
    return sum(-(-n // sizes[b]) for b, n in groups.items())


def _check_objective(objective: str | None, split: str) -> str:
    """The objective of a split's examples: ``objective``, else ``"all_positions"`` for train and ``"eval"``.

    Args:
        objective: one of :data:`LAYOUTS`, or ``None`` for the split's default.
        split: ``"train"``, ``"valid"`` or ``"test"``.

    Raises:
        ValueError: ``objective`` is not one of :data:`LAYOUTS`.
    """
    objective = objective or ("all_positions" if split == "train" else "eval")
    if objective not in LAYOUTS:
        raise ValueError(f"objective must be one of {LAYOUTS}, got {objective!r}")
    return objective


def _check_positive_int(name: str, value) -> int:
    """``value``, checked to be a positive int.

    Args:
        name: the argument's name, for the error.
        value: the argument's value.

    Raises:
        ValueError: ``value`` is not a positive int (the error names the argument and the value).
    """
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_features(schema: DatasetSchema, features: list[str] | None) -> list[str]:
    """The interaction features to read: ``features``, or all of the schema's when ``None``.

    Args:
        schema: the dataset schema.
        features: names of interaction features, or ``None``.

    Raises:
        ValueError: a name the schema has no interaction feature of.
    """
    known = [f.name for f in schema.interaction_features]
    if features is None:
        return known
    unknown = [n for n in features if n not in known]
    if unknown:
        raise ValueError(f"unknown interaction feature(s) {unknown}; the dataset has {known}")
    return features


def _check_bucket_boundaries(
    bucket_boundaries: list[int] | str | None, max_len: int, *, one_per_length: bool
) -> list[int] | None:
    """The checked upper bounds of the length buckets, the last one ``max_len`` (``None``: no buckets).

    Args:
        bucket_boundaries: ascending positive ints ``<= max_len``, ``"auto"`` or ``None``.
        max_len: events kept per example.
        one_per_length: resolve ``"auto"`` to one bucket per length (``1 .. max_len``) instead of
            :func:`length_buckets`.

    Raises:
        ValueError: the bounds are not ``"auto"`` or ascending positive ints ``<= max_len``.
    """
    if bucket_boundaries is None:
        return None
    if bucket_boundaries == "auto":
        # Evaluation has no batch mix to keep: one bucket per length pads nothing (Beauty validation: 22% fewer
        # slots than the geometric buckets). Fixed shapes for XLA keep the few geometric ones.
        return list(range(1, max_len + 1)) if one_per_length else length_buckets(max_len)
    bounds = list(bucket_boundaries) if isinstance(bucket_boundaries, (list, tuple)) else None
    if (
        not bounds
        or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in bounds)
        or bounds != sorted(set(bounds))
        or bounds[-1] > max_len
    ):
        raise ValueError(
            f"bucket_boundaries must be 'auto' or ascending positive ints <= max_len={max_len}, "
            f"got {bucket_boundaries!r}"
        )
    # Lengths above the last bound would form one more, unbounded bucket; max_len closes it.
    return bounds if bounds[-1] == max_len else bounds + [max_len]


def _read_records(
    prepared: PreparedDataset,
    split: str,
    *,
    shuffle: bool,
    shuffle_buffer: int,
    seed: int | None,
    cache: bool,
    file_shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """The parsed records of a split (see :func:`parse_sequence_examples`), one per user.

    Files are read in parallel (in a shuffled order with ``shuffle``), the record count is checked against the
    manifest's, and the records are parsed, cached in memory (``cache``) and shuffled (``shuffle``).

    Args:
        prepared: the prepared dataset.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        shuffle: shuffle the files and the records, anew at every pass.
        shuffle_buffer: records in the shuffle buffer.
        seed: seed of the file and record order.
        cache: cache the parsed records (before shuffling, so that every pass still shuffles).
        file_shard: ``(workers, index)``: read only the files ``i`` with ``i % workers == index`` (their record
            count is then not checked against the manifest's, which counts every file).
    """
    schema = prepared.schema
    files = prepared.files(split)
    if file_shard is not None:
        workers, index = file_shard
        files = files[index::workers]
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=seed is not None or not shuffle,
    )
    expected = prepared.split_records(split) if file_shard is None else None
    if expected is not None:
        # A shard that lost records (or reads as none: TensorFlow takes a garbled length for the end of the file)
        # fails the pass at its end instead of yielding metrics from part of the users.
        ds = ds.apply(tf.data.experimental.assert_cardinality(expected))
    ds = ds.map(lambda s: parse_sequence_examples(s, schema), num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds


def _has_target(record: dict[str, tf.Tensor]) -> tf.Tensor:
    """Whether a record has at least two events: a history and a target."""
    return tf.shape(record[ITEM_ID])[0] >= 2


def _all_positions_example(record: dict[str, tf.Tensor], keep: list[str], max_len: int) -> tuple:
    """The ``"all_positions"`` example of a record: its events but the last as input, each next event as label.

    Args:
        record: a parsed record (:func:`parse_sequence_examples`).
        keep: the record keys that become inputs (``item_id`` and the interaction features).
        max_len: events kept (the most recent).
    """
    sequences = {k: record[k] for k in keep}
    n = tf.shape(record[ITEM_ID])[0]
    inputs = _window(sequences, 0, n - 1, max_len)
    labels = _window({ITEM_ID: record[ITEM_ID]}, 1, n, max_len)[ITEM_IDS]
    return inputs, labels


def _eval_example(record: dict[str, tf.Tensor], keep: list[str], max_len: int) -> tuple:
    """The ``"eval"`` example of a record: the history before its last event as input, that event as label.

    Args as :func:`_all_positions_example`.
    """
    sequences = {k: record[k] for k in keep}
    n = tf.shape(record[ITEM_ID])[0]
    return _window(sequences, 0, n - 1, max_len), record[ITEM_ID][n - 1]


def _target_window_examples(record: dict[str, tf.Tensor], keep: list[str], max_len: int) -> tf.data.Dataset:
    """The ``"all_targets"`` examples of a record: the windows of :func:`target_windows`, newest first.

    Windows end every ``max_len // 2`` targets from the newest; each trains on its newest ``max_len // 2`` slots,
    the oldest window on all of its slots (labels 0 elsewhere).

    Args as :func:`_all_positions_example`.
    """
    n = tf.shape(record[ITEM_ID])[0]
    targets = n - 1
    step = max(1, max_len // 2)
    count = 1 + tf.maximum(0, (targets - max_len + step - 1) // step)
    stops = targets - tf.range(count) * step
    starts = tf.maximum(0, stops - max_len)
    positions = tf.ragged.range(starts, stops)
    inputs = {(ITEM_IDS if k == ITEM_ID else k): tf.gather(record[k], positions) for k in keep}
    labels = tf.gather(record[ITEM_ID], positions + 1)
    # Slots older than the newest `step` of a window belong to an older window (none in the oldest one).
    trained_from = tf.where(tf.range(count) == count - 1, 0, stops - step)
    keep_label = positions >= tf.expand_dims(trained_from, 1)
    labels = tf.ragged.map_flat_values(tf.where, keep_label, labels, tf.zeros_like(labels))
    return tf.data.Dataset.from_tensor_slices((inputs, labels))


def _prefix_examples(record: dict[str, tf.Tensor], keep: list[str], max_len: int) -> tf.data.Dataset:
    """The ``"prefix"`` examples of a record: every prefix as input (its most recent ``max_len`` events), the
    next event as label.

    Args as :func:`_all_positions_example`.
    """
    # All prefixes of a record at once: row t - 1 holds the window of events before target t.
    n = tf.shape(record[ITEM_ID])[0]
    targets = tf.range(1, n)
    windows = tf.ragged.range(tf.maximum(0, targets - max_len), targets)
    inputs = {(ITEM_IDS if k == ITEM_ID else k): tf.gather(record[k], windows) for k in keep}
    # Rows of the ragged windows are 1-D tensors (the batching step's map makes them plain tensors).
    return tf.data.Dataset.from_tensor_slices((inputs, tf.gather(record[ITEM_ID], targets)))


def _to_examples(
    records: tf.data.Dataset,
    objective: str,
    keep: list[str],
    max_len: int,
    *,
    shuffle: bool,
    shuffle_buffer: int,
    seed: int | None,
) -> tf.data.Dataset:
    """The ``(inputs, labels)`` examples of an objective, from the parsed records.

    Args:
        records: parsed records (:func:`_read_records`).
        objective: one of :data:`LAYOUTS`.
        keep: the record keys that become inputs (``item_id`` and the interaction features).
        max_len: events kept per example (the most recent).
        shuffle: shuffle the examples of ``"all_targets"`` and ``"prefix"``, which come several per record.
        shuffle_buffer: examples in the shuffle buffer.
        seed: seed of the example order.
    """
    if objective in ("all_positions", "eval"):
        # One example per record (the records are already shuffled).
        to_example = _all_positions_example if objective == "all_positions" else _eval_example
        records = records.filter(_has_target)
        return records.map(lambda record: to_example(record, keep, max_len), num_parallel_calls=tf.data.AUTOTUNE)
    if objective == "all_targets":
        examples = records.filter(_has_target).flat_map(lambda record: _target_window_examples(record, keep, max_len))
    else:
        # A record of one event has no prefix with a target: it yields no example.
        examples = records.flat_map(lambda record: _prefix_examples(record, keep, max_len))
    if shuffle:
        # A record's examples come one after another: mix them with other records' examples.
        examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return examples


def _batch_examples(
    examples: tf.data.Dataset,
    prepared: PreparedDataset,
    split: str,
    objective: str,
    *,
    batch_size: int,
    max_len: int,
    pad_to_max_len: bool,
    drop_remainder: bool,
    bucket_boundaries: list[int] | None,
    count: bool = True,
) -> tf.data.Dataset:
    """Left-padded batches of the examples, with their count declared when the length statistics give it.

    Args:
        examples: ``(inputs, labels)`` examples (:func:`_to_examples`).
        prepared: the prepared dataset (its length statistics size the buckets' batches and count the batches).
        split: the examples' split.
        objective: the examples' objective, one of :data:`LAYOUTS`.
        batch_size: examples per batch (per bucket: see :func:`bucket_batch_sizes`).
        max_len: events kept per example.
        pad_to_max_len: pad to ``max_len`` (or the bucket's upper bound) instead of the longest sequence.
        drop_remainder: drop the last, smaller batch (of each bucket).
        bucket_boundaries: checked bucket bounds (:func:`_check_bucket_boundaries`), or ``None``.
        count: declare the batch count (the statistics count every file: not for a worker's own files).
    """
    sizes = (
        bucket_batch_sizes(prepared, split, objective, batch_size, max_len, bucket_boundaries)
        if bucket_boundaries
        else None
    )
    ds = _left_pad_batch(
        examples, batch_size, max_len if pad_to_max_len else None, drop_remainder, bucket_boundaries, sizes
    )
    batches = (
        count_batches(prepared, split, objective, batch_size, max_len, drop_remainder, bucket_boundaries, sizes)
        if count
        else None
    )
    if batches is not None:
        # Known length: Keras shows a complete progress bar and does not warn at the end of each epoch.
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds


def _finish(batches: tf.data.Dataset, *, cache: bool, repeat: bool, own_files: bool = False) -> tf.data.Dataset:
    """The batches cached in memory (``cache``), repeated indefinitely (``repeat``), sharded by data and prefetched.

    Args:
        batches: the batches of :func:`_batch_examples`.
        cache: cache the finished batches (when nothing is shuffled: later passes read the cache alone).
        repeat: repeat indefinitely.
    """
    ds = batches
    if cache:
        ds = ds.cache()
        # Later passes only read the cache: nothing for tf.data's autotuning to tune. Its background thread
        # sleeps for doubling periods (10 ms, 20 ms, ...) and an exhausted iterator of this pipeline was seen to
        # wait for the current period to end when Keras drops it after an evaluation (a 13 s pass reported as
        # 20.5 s, the end of the period that began after 10.2 s); without autotuning it is released at once.
        options = tf.data.Options()
        options.autotune.enabled = False
        ds = ds.with_options(options)
    if repeat:
        ds = ds.repeat()
    # Under a multi-worker tf.distribute strategy every worker reads this same stream of batches and keeps its
    # part of each one (DATA: the global batches of one process, every example seen once per pass), or, with
    # `file_shard`, reads only its own shard files, chosen here (auto-sharding OFF); docs/scaling.md.
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.OFF if own_files else policy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def make_dataset(
    prepared: PreparedDataset | str,
    split: str,
    *,
    objective: str | None = None,
    batch_size: int = 256,
    max_len: int | None = None,
    features: list[str] | None = None,
    shuffle: bool | None = None,
    shuffle_buffer: int = 10_000,
    seed: int | None = None,
    cache: bool = False,
    pad_to_max_len: bool = False,
    drop_remainder: bool = False,
    repeat: bool = False,
    bucket_boundaries: list[int] | str | None = None,
    file_shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Builds the input pipeline of one split.

    Args:
        prepared: a :class:`PreparedDataset` or its directory.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        objective: the examples, one of :data:`LAYOUTS`: a training objective (``"all_positions"``,
            ``"all_targets"`` or ``"prefix"``, as ``training.objective``) or ``"eval"`` (one example per user,
            the split's target as label); default ``"all_positions"`` for train and ``"eval"`` otherwise.
        batch_size: examples per batch.
        max_len: events kept per example (the most recent); default the schema's.
        features: interaction-level features to include (default all).
        shuffle: shuffle files and examples; default True for train.
        shuffle_buffer: examples in the shuffle buffer.
        seed: seed of every random choice (file order, example order).
        cache: cache in memory: the finished batches when nothing is
            shuffled (evaluation: later passes skip parsing, windowing and
            padding), else the parsed records (before shuffling).
        pad_to_max_len: pad every batch to ``max_len`` (or, with buckets, to
            its bucket's upper bound) instead of its longest sequence: a fixed
            set of shapes, for XLA.
        drop_remainder: drop the last, smaller batch.
        repeat: repeat indefinitely.
        bucket_boundaries: batch examples by length: upper bounds of the
            length buckets (ascending, each ``<= max_len``), or ``"auto"`` for
            :func:`length_buckets` (with the ``"eval"`` objective and without
            ``pad_to_max_len``: one bucket per length, so evaluation batches
            carry no padding at all). Each batch then holds examples of one
            bucket, so short sequences are not padded to the longest of a
            random batch; with the loss at every position, batches of short
            sequences hold more of them (see :func:`bucket_batch_sizes`).
            Off (``None``) by default.
        file_shard: ``(workers, index)`` of a multi-worker ``tf.distribute``
            run: this worker reads only the shard files ``i`` with
            ``i % workers == index`` (tf.data's auto-sharding off; the record
            count is then not checked against the manifest's) instead of
            keeping its part of every batch of the whole stream (``DATA``
            auto-sharding, the default).

    Returns:
        A ``tf.data.Dataset`` of ``(inputs, labels)`` batches.

    Raises:
        ValueError: an argument out of its range (named with its value), an unknown interaction feature or split.
    """
    if not isinstance(prepared, PreparedDataset):
        prepared = PreparedDataset.open(prepared)
    objective = _check_objective(objective, split)
    max_len = _check_positive_int("max_len", max_len or prepared.schema.max_len)
    _check_positive_int("batch_size", batch_size)
    keep = [ITEM_ID, *_check_features(prepared.schema, features)]
    shuffle = split == "train" if shuffle is None else shuffle
    bucket_boundaries = _check_bucket_boundaries(
        bucket_boundaries, max_len, one_per_length=objective == "eval" and not pad_to_max_len
    )
    records = _read_records(
        prepared,
        split,
        shuffle=shuffle,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        cache=cache and shuffle,
        file_shard=file_shard,
    )
    examples = _to_examples(
        records, objective, keep, max_len, shuffle=shuffle, shuffle_buffer=shuffle_buffer, seed=seed
    )
    batches = _batch_examples(
        examples,
        prepared,
        split,
        objective,
        batch_size=batch_size,
        max_len=max_len,
        pad_to_max_len=pad_to_max_len,
        drop_remainder=drop_remainder,
        bucket_boundaries=bucket_boundaries,
        count=file_shard is None,
    )
    return _finish(batches, cache=cache and not shuffle, repeat=repeat, own_files=file_shard is not None)


def fixed_batch_shapes(jit_compile: bool = False) -> bool:
    """Whether batches should come in a few fixed shapes (``pad_to_max_len``): when every new shape is compiled
    again, as under XLA (``jit_compile``) and always under JAX."""
    import keras

    return bool(jit_compile) or keras.backend.backend() == "jax"


def data_parallel_layout() -> tuple[int, int, int]:
    """``(devices, processes, this process's index)`` of the active ``keras.distribution`` (JAX), else
    ``(1, 1, 0)``."""
    import keras

    active = keras.distribution.distribution()
    if active is None or not hasattr(active, "device_mesh"):
        return 1, 1, 0
    import jax  # keras.distribution runs on the JAX backend

    return int(active.device_mesh.devices.size), int(active.num_processes), int(jax.process_index())


def pad_batches(ds: tf.data.Dataset, multiple: int | None = None) -> tf.data.Dataset:
    """Pads every ``(inputs, labels)`` batch with empty rows to a multiple of ``multiple`` rows; under a
    multi-process ``keras.distribution``, keeps this process's part of each padded batch.

    ``keras.distribution.DataParallel`` (JAX) splits each batch along its first axis over the devices, which must
    divide it; a last, smaller batch seldom does. An empty row (every input and label 0, the padding id) has no
    labelled slot: it adds nothing to the loss, the gradients or the ranking metrics. With several processes,
    every process reads the same stream of global batches and keeps its own consecutive rows of each (process
    ``p`` of ``P`` the ``p``-th of ``P`` equal slices): Keras assembles the global batch from the processes' parts,
    so every example is used once per pass, as in one process.

    Args:
        ds: batches of :func:`make_dataset`.
        multiple: rows per batch a multiple of this; default the device count of the active distribution
            (one device and one process: ``ds`` unchanged).
    """
    devices, processes, process = data_parallel_layout()
    multiple = devices if multiple is None else multiple
    if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    if multiple == 1 and processes == 1:
        return ds

    def pad(inputs, labels):
        rows = tf.shape(labels)[0]
        padded = rows + (multiple - rows % multiple) % multiple
        share = padded // processes

        def pad_rows(x):
            x = tf.pad(x, [[0, padded - rows]] + [[0, 0]] * (x.shape.rank - 1))
            return x[process * share : (process + 1) * share] if processes > 1 else x

        return tf.nest.map_structure(pad_rows, inputs), pad_rows(labels)

    return ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


@contextlib.contextmanager
def reading(prepared: PreparedDataset) -> Iterator[None]:
    """Turns a failed read of a prepared dataset's records into a :class:`PreparedDataError` naming the file.

    TensorFlow reports a damaged TFRecord file (``DataLossError``), a split with fewer records than the manifest
    lists (``assert_cardinality``) or a record without a declared feature deep inside ``fit`` / ``evaluate``,
    without the file. On such an error the directory is checked byte by byte against its manifest; the first file
    that differs is named. An error the check cannot explain is raised as it is.
    """
    try:
        yield
    except tf.errors.OpError as err:
        if not prepared.manifest:
            raise
        check_prepared(prepared.directory, prepared.manifest, hashes=True)
        if "expected to contain" in str(err.message):
            raise PreparedDataError(
                f"prepared dataset {prepared.directory}: a split yielded another number of records than its manifest "
                f"lists ({err.message.strip()}), although every file matches the manifest"
            ) from err
        raise
