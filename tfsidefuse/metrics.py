"""Full-ranking metrics for next-item prediction, as RecBole computes them.

Every item is ranked (no sampled negatives). For an example with target `y`
and scores `z`, the rank is optimistic: `rank = 1 + #{i not excluded: z_i > z_y}`,
which equals RecBole's `torch.topk` ranking whenever there are no ties. With a
single target, Recall@K equals HR@K and the ideal DCG is 1.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import keras
from keras import ops

from tfsidefuse.data.schema import OOV_ID, PAD_ID

_shared = threading.local()


@contextlib.contextmanager
def shared_ranks() -> Iterator[None]:
    """Computes each target's rank once for every ranking metric updated inside the block.

    The standard set (HR@5/10/20, NDCG@5/10/20, MRR) would otherwise compare
    every score with the target's seven times. Inside the block, metrics
    updated with the same `(y_true, y_pred)` tensor objects and excluded ids
    reuse the first one's ranks; `NextItemModel.compute_metrics` opens it
    around Keras' metric updates. Outside it, each metric ranks on its own.
    """
    previous = getattr(_shared, "ranks", None)
    _shared.ranks = []
    try:
        yield
    finally:
        _shared.ranks = previous


def target_ranks(y_true: Any, y_pred: Any, excluded_ids: Sequence[int] = (PAD_ID, OOV_ID)) -> tuple[Any, Any]:
    """Optimistic rank of each target among the non-excluded columns, and the target ids.

    Args:
        y_true: target ids, `[batch]` or `[batch, seq_len]` (or with a
            trailing axis of 1).
        y_pred: scores, `[batch, num_items]` or `[batch, seq_len, num_items]`.
        excluded_ids: columns that never take part in the ranking.

    Returns:
        `(rank, targets)`: float32 ranks (1 = best) and int32 target ids, both
        of `y_pred`'s shape without its last axis.
    """
    memo = getattr(_shared, "ranks", None)
    key = tuple(excluded_ids)
    if memo is not None:
        for labels, scores, ids, result in memo:
            if labels is y_true and scores is y_pred and ids == key:
                return result
    result = _target_ranks(y_true, y_pred, key)
    if memo is not None:
        memo.append((y_true, y_pred, key, result))
    return result


def _target_ranks(y_true: Any, y_pred: Any, excluded_ids: tuple[int, ...]) -> tuple[Any, Any]:
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "int32")
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    target_score = ops.take_along_axis(y_pred, ops.expand_dims(ops.maximum(y_true, 0), axis=-1), axis=-1)
    better = ops.sum(ops.cast(ops.greater(y_pred, target_score), "float32"), axis=-1)
    # Excluded columns that beat the target are taken back out: a few columns, not a [batch, num_items] mask.
    for i in sorted(set(excluded_ids)):
        if y_pred.shape[-1] is None or i < y_pred.shape[-1]:
            better = better - ops.cast(ops.greater(y_pred[..., i], target_score[..., 0]), "float32")
    return 1.0 + better, y_true


class RankingMetric(keras.metrics.Metric):
    """Base class: averages a function of the target's rank over the examples.

    `update_state(y_true, y_pred)` accepts logits `[batch, num_items]` with
    target ids `[batch]`, or logits `[batch, seq_len, num_items]` with target
    ids `[batch, seq_len]`. Examples whose target is `0` (padding: no target at
    this slot) are skipped. Columns listed in `excluded_ids` never take part
    in the ranking.

    Args:
        excluded_ids: item ids that are never ranked (padding and OOV by
            default).
        name: metric name.
        dtype: dtype of the metric's state.
    """

    def __init__(
        self, excluded_ids: Sequence[int] = (PAD_ID, OOV_ID), name: str | None = None, dtype: Any = None
    ) -> None:
        super().__init__(name=name, dtype=dtype)
        excluded_ids = tuple(excluded_ids)
        if not all(isinstance(i, int) and i >= 0 for i in excluded_ids):
            raise ValueError(f"`excluded_ids` must be non-negative ints. Received: excluded_ids={excluded_ids!r}")
        self.excluded_ids = excluded_ids
        self.total = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, name="count")

    def score(self, rank: Any) -> Any:
        """The per-example value for a float rank (1 = best)."""
        raise NotImplementedError

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        rank, y_true = target_ranks(y_true, y_pred, self.excluded_ids)
        self.update_from_ranks(rank, y_true, sample_weight)

    def update_from_ranks(self, rank: Any, y_true: Any, sample_weight: Any = None) -> None:
        """Accumulates examples whose ranks are already known (`target_ranks`, or a ranking by blocks of items).

        Args:
            rank: float ranks (1 = best), `[batch]` or `[batch, seq_len]`.
            y_true: target ids of the same shape; examples with target 0 are skipped.
            sample_weight: optional weights, broadcastable to the ranks.
        """
        rank = ops.cast(rank, "float32")
        y_true = ops.reshape(ops.cast(y_true, "int32"), ops.shape(rank))
        weight = ops.cast(ops.not_equal(y_true, PAD_ID), "float32")
        if sample_weight is not None:
            weight = weight * ops.broadcast_to(ops.cast(sample_weight, "float32"), ops.shape(weight))
        self.total.assign_add(ops.cast(ops.sum(self.score(rank) * weight), self.dtype))
        self.count.assign_add(ops.cast(ops.sum(weight), self.dtype))

    def result(self) -> Any:
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self) -> None:
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["excluded_ids"] = list(self.excluded_ids)
        return config


class _CutoffMetric(RankingMetric):
    """A ranking metric with a cutoff `k`; named `<prefix>@<k>` by default."""

    prefix = ""

    def __init__(self, k: int = 10, excluded_ids: Sequence[int] = (PAD_ID, OOV_ID), **kwargs: Any) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"`k` must be a positive int. Received: k={k!r}")
        kwargs["name"] = kwargs.get("name") or f"{self.prefix}@{k}"
        super().__init__(excluded_ids=excluded_ids, **kwargs)
        self.k = k

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["k"] = self.k
        return config


@keras.saving.register_keras_serializable(package="tfsidefuse")
class HitRate(_CutoffMetric):
    """HR@K: the fraction of examples whose target ranks in the top K.

    `HR@K = 1[rank <= K]`, averaged over the examples. With one target per
    example it equals Recall@K.

    Args:
        k: the cutoff K.
        excluded_ids: item ids that are never ranked (padding and OOV).
        name: metric name, `"hr@<k>"` by default.
        dtype: dtype of the metric's state.

    Example:

    ```python
    metric = HitRate(k=10)
    metric.update_state(labels, logits)  # [batch], [batch, num_items]
    metric.result()
    ```
    """

    prefix = "hr"

    def score(self, rank: Any) -> Any:
        return ops.cast(rank <= self.k, "float32")


@keras.saving.register_keras_serializable(package="tfsidefuse")
class NDCG(_CutoffMetric):
    """NDCG@K with a single target: `1 / log2(rank + 1)` if `rank <= K`, else 0.

    The ideal DCG of a single target is 1, so no normalization is needed.

    Args:
        k: the cutoff K.
        excluded_ids: item ids that are never ranked (padding and OOV).
        name: metric name, `"ndcg@<k>"` by default.
        dtype: dtype of the metric's state.

    Example:

    ```python
    metric = NDCG(k=10)
    metric.update_state(labels, logits)  # [batch], [batch, num_items]
    metric.result()
    ```

    Reference:
        Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR
        techniques", TOIS 2002.
    """

    prefix = "ndcg"

    def score(self, rank: Any) -> Any:
        return ops.where(rank <= self.k, 1.0 / ops.log2(rank + 1.0), 0.0)


@keras.saving.register_keras_serializable(package="tfsidefuse")
class MRR(RankingMetric):
    """Mean reciprocal rank over the full ranking: `1 / rank`, no cutoff.

    Args:
        excluded_ids: item ids that are never ranked (padding and OOV).
        name: metric name, `"mrr"` by default.
        dtype: dtype of the metric's state.

    Example:

    ```python
    metric = MRR()
    metric.update_state(labels, logits)  # [batch], [batch, num_items]
    metric.result()
    ```
    """

    def __init__(self, excluded_ids: Sequence[int] = (PAD_ID, OOV_ID), name: str = "mrr", **kwargs: Any) -> None:
        super().__init__(excluded_ids=excluded_ids, name=name, **kwargs)

    def score(self, rank: Any) -> Any:
        return 1.0 / rank


def ranking_metrics(ks: Sequence[int] = (5, 10, 20), excluded_ids: Sequence[int] = (PAD_ID, OOV_ID)) -> list:
    """The standard metric set: `[HR@k for k in ks] + [NDCG@k for k in ks] + [MRR]`.

    Args:
        ks: the cutoffs.
        excluded_ids: item ids that are never ranked (padding and OOV).

    Returns:
        A list of fresh metric objects, ready for `compile(metrics=...)`.
    """
    return (
        [HitRate(k, excluded_ids=excluded_ids) for k in ks]
        + [NDCG(k, excluded_ids=excluded_ids) for k in ks]
        + [MRR(excluded_ids=excluded_ids)]
    )
