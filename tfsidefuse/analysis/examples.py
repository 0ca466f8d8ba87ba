"""The evaluation examples of a split as numpy arrays, and reproducible samples of them."""

from __future__ import annotations

import dataclasses

import numpy as np

from tfsidefuse.data.pipeline import ITEM_IDS, make_dataset, reading
from tfsidefuse.data.prepared import PreparedDataset


@dataclasses.dataclass
class EvalExamples:
    """Every example of a split in ``eval`` mode, left-padded to the dataset's ``max_len``.

    Example ``i`` is the ``i``-th of :func:`~tfsidefuse.data.pipeline.make_dataset`
    without shuffling, which is deterministic.

    Attributes:
        inputs: model inputs, ``item_ids`` and each interaction feature, int32 ``[n, max_len]``.
        labels: target item ids, int32 ``[n]``.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """Real (non-padded) input items per example."""
        return np.sum(self.inputs[ITEM_IDS] != 0, axis=1)

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The inputs of some examples."""
        return {k: v[indices] for k, v in self.inputs.items()}

    def sample(self, count: int, seed: int = 0, min_length: int = 1) -> np.ndarray:
        """Indices of ``count`` examples (all if fewer) with at least ``min_length`` input items, sorted.

        Falls back to the longest examples when fewer than ``count`` are long enough.
        """
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive int, got {count!r}")
        lengths = self.lengths
        eligible = np.flatnonzero(lengths >= min_length)
        if len(eligible) < count:
            eligible = np.argsort(-lengths, kind="stable")[: min(count, len(lengths))]
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(eligible, size=min(count, len(eligible)), replace=False))


def load_examples(prepared: PreparedDataset | str, split: str = "test", batch_size: int = 4096) -> EvalExamples:
    """Reads a split's evaluation examples (history before the target, and the target)."""
    if not isinstance(prepared, PreparedDataset):
        prepared = PreparedDataset.open(prepared)
    ds = make_dataset(prepared, split, objective="eval", batch_size=batch_size, shuffle=False, pad_to_max_len=True)
    inputs: dict[str, list] = {}
    labels = []
    with reading(prepared):
        for x, y in ds:
            for k, v in x.items():
                inputs.setdefault(k, []).append(v.numpy())
            labels.append(y.numpy())
    if not labels:
        raise ValueError(f"split {split!r} of {prepared.directory} has no evaluation examples")
    return EvalExamples({k: np.concatenate(v) for k, v in inputs.items()}, np.concatenate(labels).astype(np.int32))
