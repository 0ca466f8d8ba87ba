"""Full-ranking evaluation of models and of the most-popular baseline.

Protocol (as the papers): the target is ranked against every item id, padding
and OOV ids are never ranked, items already in the history stay rankable
unless ``exclude_history`` is set. See :mod:`tfsidefuse.metrics`.
"""

from __future__ import annotations

import numpy as np

from tfsidefuse.data.pipeline import ITEM_IDS, fixed_batch_shapes, make_dataset, pad_batches, reading
from tfsidefuse.data.prepared import PreparedDataset
from tfsidefuse.metrics import RankingMetric, ranking_metrics

METRIC_ORDER = ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr")


def evaluate_model(
    model,
    prepared: PreparedDataset | str,
    split: str = "test",
    *,
    batch_size: int = 512,
    features: list[str] | None = None,
    verbose: int = 0,
    item_block: int | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of a compiled :class:`NextItemModel` on a split.

    Args:
        model: a compiled :class:`~tfsidefuse.models.NextItemModel`.
        prepared: the prepared dataset (or its directory).
        split: ``"valid"`` or ``"test"``.
        batch_size: examples per batch.
        features: interaction features the model reads (default: all).
        verbose: Keras progress output.
        item_block: score this many items at a time (:func:`evaluate_in_blocks`), so that memory grows with
            ``batch_size x item_block`` instead of ``batch_size x num_items``; the metrics are the same.
            ``None`` (default): ``model.evaluate`` on the full ``[batch, num_items]`` logits.

    Returns:
        ``{"hr@5": ..., "ndcg@20": ..., "mrr": ..., "loss": ...}``.
    """
    if not isinstance(prepared, PreparedDataset):
        prepared = PreparedDataset.open(prepared)
    # Length buckets: a batch of short histories is not padded to the longest one of the split. JAX compiles one
    # program per shape: there the batches are padded to the bounds of a few geometric buckets.
    ds = make_dataset(
        prepared,
        split,
        objective="eval",
        batch_size=batch_size,
        features=features,
        shuffle=False,
        bucket_boundaries="auto",
        pad_to_max_len=fixed_batch_shapes(),
    )
    with reading(prepared):
        if item_block is not None:
            return evaluate_in_blocks(model, ds, item_block)
        # Under JAX's DataParallel the devices must divide every batch: the last ones get empty rows.
        results = model.evaluate(pad_batches(ds), verbose=verbose, return_dict=True)
    return {k: float(v) for k, v in results.items()}


def _compiled_ranking_metrics(model) -> list:
    """Fresh copies of the ranking metrics the model was compiled with; the standard set otherwise."""
    compiled = getattr(getattr(model, "_compile_metrics", None), "_user_metrics", None)
    if isinstance(compiled, (list, tuple)) and compiled and all(isinstance(m, RankingMetric) for m in compiled):
        return [type(m).from_config(m.get_config()) for m in compiled]
    return ranking_metrics()


def evaluate_in_blocks(model, dataset, item_block: int, metrics: list | None = None) -> dict[str, float]:
    """Full-ranking metrics of a model on ``(inputs, targets)`` batches, scoring ``item_block`` items at a time.

    Each batch's hidden states are computed once; the items are then scored block by block
    (:meth:`~tfsidefuse.models.NextItemModel.rank_in_blocks`), keeping each example's rank (the optimistic rank
    of :func:`tfsidefuse.metrics.target_ranks`: ties count for the target, padding and OOV never rank) and a
    running log-sum-exp for the loss. Memory grows with ``batch x item_block``, not ``batch x num_items``. The
    ranking metrics are accumulated per batch as ``model.evaluate`` accumulates them, so they are the same; the
    ``loss`` (the full-softmax cross-entropy, averaged over the batches weighted by their size, as Keras does)
    agrees up to float rounding.

    Args:
        model: a :class:`~tfsidefuse.models.NextItemModel`.
        dataset: batches ``(inputs, targets)`` with targets ``[batch]``.
        item_block: items scored per block.
        metrics: :class:`~tfsidefuse.metrics.RankingMetric` objects to fill (default: copies of those the model
            was compiled with, or :func:`~tfsidefuse.metrics.ranking_metrics`).

    Returns:
        ``{metric name: value, ..., "loss": ...}``.
    """
    import keras

    if metrics is None:
        metrics = _compiled_ranking_metrics(model)
    groups: dict[tuple, list] = {}
    for metric in metrics:
        groups.setdefault(tuple(sorted(set(metric.excluded_ids))), []).append(metric)
    loss = keras.metrics.Mean(name="loss")

    def step(inputs, targets):
        labels = keras.ops.reshape(keras.ops.cast(targets, "int32"), (-1,))
        for excluded, group in groups.items():
            ranked = model.rank_in_blocks(inputs, labels, item_block=item_block, excluded_ids=excluded)
            for metric in group:
                metric.update_from_ranks(ranked["rank"], labels)
        labelled = keras.ops.cast(keras.ops.not_equal(labels, 0), "float32")
        cross_entropy = (ranked["log_normalizer"] - ranked["target_logit"]) * labelled
        # Keras' loss tracker: the batch's mean over its labelled rows, weighted by the batch size.
        batch_loss = keras.ops.divide_no_nan(keras.ops.sum(cross_entropy), keras.ops.sum(labelled))
        loss.update_state(batch_loss, sample_weight=keras.ops.shape(labels)[0])

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Traced like Keras' test function, so that the metric updates run as they do in `model.evaluate`.
        step = tf.function(step, reduce_retracing=True)
    for inputs, targets in dataset:
        step(inputs, targets)
    results = {metric.name: float(metric.result()) for metric in metrics}
    results["loss"] = float(loss.result())
    return results


def item_popularity(prepared: PreparedDataset | str) -> np.ndarray:
    """Number of training events of each item id (float64 ``[num_items]``)."""
    if not isinstance(prepared, PreparedDataset):
        prepared = PreparedDataset.open(prepared)
    counts = np.zeros(prepared.schema.num_items, dtype=np.float64)
    longest = int(prepared.stats.get("max_length", prepared.schema.max_len))
    ds = make_dataset(prepared, "train", objective="eval", batch_size=4096, max_len=longest, shuffle=False)
    with reading(prepared):
        for inputs, labels in ds:
            ids = np.concatenate([inputs[ITEM_IDS].numpy().ravel(), labels.numpy().ravel()])
            counts += np.bincount(ids, minlength=len(counts))[: len(counts)]
    counts[:2] = 0.0
    return counts


def evaluate_most_popular(
    prepared: PreparedDataset | str, split: str = "test", *, batch_size: int = 1024
) -> dict[str, float]:
    """Metrics of the baseline that ranks every user's items by training popularity.

    Ties between equally popular items are broken by a tiny deterministic
    offset (lower id first), so the baseline gets no credit from ties.
    """
    if not isinstance(prepared, PreparedDataset):
        prepared = PreparedDataset.open(prepared)
    counts = item_popularity(prepared)
    scores = counts - np.arange(len(counts)) * 1e-9
    metrics = ranking_metrics()
    ds = make_dataset(prepared, split, objective="eval", batch_size=batch_size, shuffle=False)
    with reading(prepared):
        for _, labels in ds:
            y_pred = np.broadcast_to(scores.astype(np.float32), (labels.shape[0], len(scores)))
            for m in metrics:
                m.update_state(labels.numpy(), y_pred)
    return {m.name: float(m.result()) for m in metrics}


def format_table(rows: dict[str, dict[str, float]], columns=METRIC_ORDER) -> str:
    """A plain-text table: one row per model/split, one column per metric."""
    width = max(len(name) for name in rows) if rows else 5
    header = f"{'':<{width}}  " + "  ".join(f"{c:>8}" for c in columns)
    lines = [header, "-" * len(header)]
    for name, values in rows.items():
        cells = "  ".join(f"{values[c]:>8.4f}" if c in values else f"{'-':>8}" for c in columns)
        lines.append(f"{name:<{width}}  {cells}")
    return "\n".join(lines)


def per_user_ranks(
    model, prepared: PreparedDataset | str, split: str = "test", *, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """The full-ranking rank of every user's target on a split, for paired comparisons of two models.

    Ranks follow the protocol of :func:`evaluate_model` (optimistic rank among
    all items but padding and OOV, history exclusion as the model does it), so
    ``mean(1 / log2(rank + 1) * (rank <= 20))`` is the split's NDCG@20.

    Returns:
        ``(user_ids, ranks)``: int64 user ids sorted ascending and their int64 ranks (1 = best).
    """
    from tfsidefuse.metrics import target_ranks

    if not isinstance(prepared, PreparedDataset):
        prepared = PreparedDataset.open(prepared)
    import tensorflow as tf

    from tfsidefuse.data.pipeline import parse_sequence_examples
    from tfsidefuse.data.prepared import ITEM_ID, USER_ID

    # Unshuffled evaluation batches come in record order: the same files, interleaved the same way, give the users.
    files = prepared.files(split)
    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 8)
    )

    def parse(serialized):
        return parse_sequence_examples(serialized, prepared.schema)

    def has_target(record):
        return tf.shape(record[ITEM_ID])[0] >= 2

    users = [int(r[USER_ID]) for r in records.map(parse).filter(has_target).as_numpy_iterator()]
    examples = make_dataset(prepared, split, objective="eval", batch_size=batch_size, shuffle=False)
    ranks = []
    with reading(prepared):
        for inputs, labels in examples:
            rank, _ = target_ranks(labels, model(inputs, training=False))
            ranks.append(np.asarray(rank))
    ranks = np.concatenate(ranks)
    if len(ranks) != len(users):
        raise RuntimeError(f"{split}: {len(ranks)} ranked examples for {len(users)} users")
    user_ids = np.asarray(users, dtype=np.int64)
    order = np.argsort(user_ids, kind="stable")
    return user_ids[order], np.rint(ranks[order]).astype(np.int64)


def ndcg_at(ranks: np.ndarray, k: int = 20) -> np.ndarray:
    """Per-example NDCG@k of targets at the given ranks (one relevant item)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)
