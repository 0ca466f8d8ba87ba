"""Sampled softmax: the next-item cross-entropy over the target and a few shared sampled negatives."""

from __future__ import annotations

from typing import Any

import keras
import keras_rs
import numpy as np
from keras import ops

from tfsidefuse.data.schema import NUM_RESERVED_IDS, PAD_ID
from tfsidefuse.layers._checks import check_seed

#: Negative samplers of `SampledSoftmax`.
SAMPLERS = ("in_batch", "uniform", "log_uniform", "popularity")
#: The `logq_correction` modes of `SampledSoftmax` besides `True` (`"all"`) and `False` (`"none"`).
LOGQ_CORRECTIONS = ("all", "negatives", "none")
#: Samplers whose distribution comes from the items' training counts.
COUNT_SAMPLERS = ("log_uniform", "popularity")
#: Logit given to a masked accidental hit: `exp` of it is 0 next to any real logit (TensorFlow Recommenders' value).
MASKED_LOGIT = float(np.float32(np.finfo(np.float32).min / 100.0))
#: Sampling probabilities below this are clipped before the log (only a target that cannot be drawn has one).
PROBABILITY_EPSILON = 1e-30


@keras.saving.register_keras_serializable(package="tfsidefuse")
class AccidentalHitRemoval(keras_rs.layers.RemoveAccidentalHits):
    """`keras_rs.layers.RemoveAccidentalHits` that masks the hits: their logits become `finfo(float32).min / 100`.

    Same call as the keras-rs layer: `(logits, labels, candidate_ids)` with
    one-hot `labels` of the logits' shape and candidate ids `[num_candidates]`
    or of the labels' shape; a negative candidate whose id is the row's
    positive id gets a logit whose exponential is 0. keras-rs 0.4's layer
    adds `finfo(float32).smallest_normal / 100` to those logits (a denormal
    that leaves every normal float32 logit unchanged) and, with per-row
    candidate ids, reads each row's positive id from the first row; this
    subclass keeps its interface and contract with the hits masked.

    Call arguments:
        logits: float tensor `[..., num_candidates]`.
        labels: one-hot tensor of `logits`' shape (1 at the positive).
        candidate_ids: int tensor `[num_candidates]` or of `labels`' shape.

    Returns:
        The logits with the accidental hits masked.
    """

    def call(self, logits: Any, labels: Any, candidate_ids: Any) -> Any:
        labels = ops.convert_to_tensor(labels)
        candidate_ids = ops.cast(candidate_ids, "int32")
        candidate_ids = ops.broadcast_to(candidate_ids, ops.shape(labels))
        positive = ops.take_along_axis(candidate_ids, ops.expand_dims(ops.argmax(labels, axis=-1), -1), axis=-1)
        hit = ops.logical_and(ops.equal(candidate_ids, positive), ops.equal(labels, 0))
        return ops.where(hit, ops.cast(MASKED_LOGIT, logits.dtype), logits)


def sampling_probabilities(
    num_items: int, sampler: str, item_counts: Any = None, sampler_exponent: float = 1.0
) -> np.ndarray:
    """The probability `q_i` that one draw of a fixed sampler yields item `i`, float64 `[num_items]`.

    Padding and OOV (ids 0 and 1) are never drawn.

    - `uniform`: `1 / (num_items - 2)` for every item.
    - `popularity`: `count_i^exponent / sum_j count_j^exponent` (`exponent`
      0 is uniform; items never seen in training are not drawn for
      `exponent > 0`).
    - `log_uniform`: Zipf's law over the popularity ranks `r = 0, 1, ..` of
      the items (most frequent first, ties by id; id order without counts):
      `(log(r + 2) - log(r + 1)) / log(num_items - 1)`.

    Args:
        num_items: size of the item id space, padding and OOV included.
        sampler: `"uniform"`, `"popularity"` or `"log_uniform"`.
        item_counts: training events per item id, `[num_items]`
            (`popularity`; `log_uniform` ranks by them).
        sampler_exponent: the exponent of the `popularity` sampler.

    Returns:
        float64 `[num_items]` summing to 1.
    """
    real = num_items - NUM_RESERVED_IDS
    probabilities = np.zeros(num_items, dtype=np.float64)
    counts = None if item_counts is None else np.asarray(item_counts, dtype=np.float64)[NUM_RESERVED_IDS:]
    if sampler == "uniform":
        probabilities[NUM_RESERVED_IDS:] = 1.0 / real
    elif sampler == "popularity":
        weights = np.power(counts, sampler_exponent) if sampler_exponent != 0 else np.ones_like(counts)
        probabilities[NUM_RESERVED_IDS:] = weights / weights.sum()
    elif sampler == "log_uniform":
        ranks = np.arange(real, dtype=np.float64)
        zipf = (np.log(ranks + 2.0) - np.log(ranks + 1.0)) / np.log(real + 1.0)
        order = np.arange(real) if counts is None else np.argsort(-counts, kind="stable")
        probabilities[NUM_RESERVED_IDS + order] = zipf
    else:
        raise ValueError(f"no fixed distribution for sampler {sampler!r}")
    return probabilities / probabilities.sum()


@keras.saving.register_keras_serializable(package="tfsidefuse")
class SampledSoftmax(keras.layers.Layer):
    """Sampled softmax cross-entropy over the target and `num_negatives` shared sampled negatives.

    One set of negatives `S = (s_1, .., s_N)` is drawn per training step and
    shared by every scored slot, so that scoring stays one dense matmul of
    the slots' vectors `[slots, d]` with `[d, N]` (plus the target column).
    The logits of a slot with target `y` are `(z_y, z_{s_1}, .., z_{s_N})`,
    then, in this order:

    - logQ correction (`logq_correction`, with
      `keras_rs.layers.SamplingProbabilityCorrection`): with `True` (or
      `"all"`) every logit becomes `z_i - log q_i`, `q_i` the probability
      that one draw yields item `i` (the target's too), the correction of
      `tf.nn.sampled_softmax_loss`; the loss is then the full softmax's with
      the target's logit lowered by `log(N q_y)`, a margin that grows with
      the target's sampling probability. With `"negatives"` the target keeps
      its logit and each negative's becomes `z_i - log(N q_i)` (`N` the
      number of negative columns): the softmax's normalizer is then the
      importance-sampling estimate `e^{z_y} + sum_k e^{z_{s_k}} / (N q_{s_k})`,
      whose expectation is the full normalizer `sum_j e^{z_j}` once accidental
      hits are removed. `False` (or `"none"`) keeps the logits;
    - accidental-hit removal (`remove_accidental_hits`, with
      `AccidentalHitRemoval`): a negative equal to the slot's target is
      masked (its logit gets `finfo(float32).min / 100`);
    - hard negatives (`hard_negatives = k`, with
      `keras_rs.layers.HardNegativeMining`): only the `k` highest negative
      logits of each slot are kept beside the target;

    and the per-slot loss is `-log softmax(logits)[target]`, 0 for slots
    without a target (label 0).

    Samplers (all with replacement; padding and OOV are never drawn):

    - `uniform`: every item with probability `1 / (num_items - 2)`;
    - `popularity`: `count_i^sampler_exponent`, normalized (`item_counts`:
      training events per item, e.g. `tfsidefuse.evaluation.item_popularity`);
    - `log_uniform`: Zipf's law over the items' popularity ranks
      (`(log(r + 2) - log(r + 1)) / log(num_items - 1)` for rank `r`; id
      order without `item_counts`);
    - `in_batch`: the targets of uniformly drawn labelled slots of the batch,
      so `q_i` is the share of the batch's targets that are `i`.

    Draws come from `keras.random` with the layer's `SeedGenerator`: `draw()`
    (called in the model's forward pass, where the generator's state is
    updated also in compiled and stateless steps) returns the step's uniform
    numbers and `sample(draws, labels)` turns them into item ids by the
    inverse of the sampler's distribution.

    Args:
        num_items: size of the item id space, padding and OOV included.
        num_negatives: `N`, the shared negatives per step, in
            `[1, num_items)`.
        sampler: one of `"in_batch"`, `"uniform"`, `"log_uniform"`,
            `"popularity"`.
        sampler_exponent: exponent of the counts for `"popularity"`
            (0.75 as word2vec; 1 = proportional to popularity).
        item_counts: training events per item id, `[num_items]`; required by
            `"popularity"`, used by `"log_uniform"` (its ranks).
        hard_negatives: keep only the `k` hardest sampled negatives per slot
            (`k < num_negatives`); `None` keeps all.
        logq_correction: `True` / `"all"` (subtract `log q_i` from every
            logit), `"negatives"` (subtract `log(N q_i)` from the negatives'
            logits only) or `False` / `"none"` (see above).
        remove_accidental_hits: mask negatives equal to the slot's target.
        seed: seed of the sampling `SeedGenerator`; `None` draws one.
        **kwargs: standard layer arguments (`name`, `dtype`).

    Call arguments:
        target_logits: float `[slots]`, the score of each slot's target.
        negative_logits: float `[slots, n]`, the scores of the sampled
            negatives (`n = num_negatives` for the ids of `sample`).
        labels: int `[slots]`, the targets (0: no target).
        negative_ids: int `[n]`, the negatives' item ids.

    Returns:
        float32 `[slots]`, the per-slot cross-entropy (0 where the label is 0).

    Example:

    ```python
    sampled = SampledSoftmax(num_items=12101, num_negatives=256, sampler="popularity",
                             sampler_exponent=0.75, item_counts=item_popularity(prepared))
    model = NextItemModel(SASRecBackbone(num_items=12101, max_len=50), sampled_softmax=sampled)
    ```

    Reference:
        Jean et al., "On Using Very Large Target Vocabulary for Neural
        Machine Translation", ACL 2015; Yi et al., "Sampling-Bias-Corrected
        Neural Modeling for Large Corpus Item Recommendations", RecSys 2019.
    """

    def __init__(
        self,
        num_items: int,
        num_negatives: int = 100,
        sampler: str = "uniform",
        sampler_exponent: float = 1.0,
        item_counts: Any = None,
        hard_negatives: int | None = None,
        logq_correction: bool | str = True,
        remove_accidental_hits: bool = True,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items <= NUM_RESERVED_IDS + 1:
            raise ValueError(f"`num_items` must be an int > {NUM_RESERVED_IDS + 1}. Received: num_items={num_items!r}")
        if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or not 1 <= num_negatives < num_items:
            raise ValueError(
                f"`num_negatives` must be an int in [1, num_items={num_items}). "
                f"Received: num_negatives={num_negatives!r}"
            )
        if sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {SAMPLERS}. Received: sampler={sampler!r}")
        if isinstance(sampler_exponent, bool) or not isinstance(sampler_exponent, (int, float)) or sampler_exponent < 0:
            raise ValueError(
                f"`sampler_exponent` must be a number >= 0. Received: sampler_exponent={sampler_exponent!r}"
            )
        if hard_negatives is not None and (
            isinstance(hard_negatives, bool)
            or not isinstance(hard_negatives, int)
            or not 1 <= hard_negatives < num_negatives
        ):
            raise ValueError(
                f"`hard_negatives` must be None or an int in [1, num_negatives={num_negatives}). "
                f"Received: hard_negatives={hard_negatives!r}"
            )
        if not isinstance(logq_correction, bool) and logq_correction not in LOGQ_CORRECTIONS:
            raise ValueError(
                f"`logq_correction` must be a bool or one of {LOGQ_CORRECTIONS}. Received: "
                f"logq_correction={logq_correction!r}"
            )
        if not isinstance(remove_accidental_hits, bool):
            raise ValueError(
                f"`remove_accidental_hits` must be a bool. Received: remove_accidental_hits={remove_accidental_hits!r}"
            )
        check_seed(seed)
        counts = None
        if item_counts is not None:
            counts = np.asarray(item_counts, dtype=np.float64)
            if counts.shape != (num_items,) or not np.all(np.isfinite(counts)) or np.any(counts < 0):
                raise ValueError(
                    f"`item_counts` must hold {num_items} finite counts >= 0 (one per item id). "
                    f"Received: shape {counts.shape}"
                )
        if sampler == "popularity":
            if counts is None:
                raise ValueError("`item_counts` is required by sampler='popularity'")
            if sampler_exponent > 0 and not counts[NUM_RESERVED_IDS:].sum() > 0:
                raise ValueError("`item_counts` gives every item count 0: sampler='popularity' has nothing to draw")
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.sampler = sampler
        self.sampler_exponent = float(sampler_exponent)
        self.item_counts = counts
        self.hard_negatives = hard_negatives
        self.logq_correction = logq_correction
        self._correction = {True: "all", False: "none"}.get(logq_correction, logq_correction)
        self.remove_accidental_hits = remove_accidental_hits
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="negative_seed_generator")
        self.probability_correction = keras_rs.layers.SamplingProbabilityCorrection(
            epsilon=PROBABILITY_EPSILON, name="probability_correction"
        )
        self.hit_removal = AccidentalHitRemoval(name="accidental_hit_removal")
        self.hard_negative_mining = (
            keras_rs.layers.HardNegativeMining(hard_negatives, name="hard_negative_mining") if hard_negatives else None
        )
        if sampler in ("uniform", "in_batch"):
            self._probabilities = None
            self._cdf = None
        else:
            probabilities = sampling_probabilities(num_items, sampler, counts, self.sampler_exponent)
            cdf = np.cumsum(probabilities)
            cdf[-1] = 1.0
            self._probabilities = probabilities.astype(np.float32)
            self._cdf = cdf.astype(np.float32)
        self.built = True

    def draw(self) -> Any:
        """The step's uniform random numbers in `[0, 1)`, float32 `[num_negatives]`."""
        return keras.random.uniform((self.num_negatives,), seed=self.seed_generator)

    def sample(self, draws: Any, labels: Any) -> Any:
        """The negative item ids of draws `[num_negatives]` (from `draw()`), int32 `[num_negatives]`.

        Args:
            draws: float `[num_negatives]` in `[0, 1)`.
            labels: int `[slots]`, the batch's targets (0: none); read by `in_batch` only.
        """
        draws = ops.cast(draws, "float32")
        if self.sampler == "uniform":
            real = self.num_items - NUM_RESERVED_IDS
            ids = NUM_RESERVED_IDS + ops.cast(ops.floor(draws * real), "int32")
            return ops.minimum(ids, self.num_items - 1)
        if self.sampler == "in_batch":
            labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
            labelled = ops.cast(ops.not_equal(labels, PAD_ID), "float32")
            count = ops.sum(labelled)
            # The r-th labelled slot (r from 1) is the first whose running count of labelled slots reaches r.
            wanted = ops.minimum(ops.floor(draws * count) + 1.0, ops.maximum(count, 1.0))
            slot = ops.searchsorted(ops.cumsum(labelled), wanted, side="left")
            slot = ops.minimum(ops.cast(slot, "int32"), ops.shape(labels)[0] - 1)
            return ops.take(labels, slot, axis=0)
        ids = ops.searchsorted(ops.convert_to_tensor(self._cdf), draws, side="right")
        return ops.minimum(ops.cast(ids, "int32"), self.num_items - 1)

    def probabilities(self, ids: Any, labels: Any) -> Any:
        """`q_i`, the probability that one draw yields item `i`, float32 of `ids`' shape.

        Args:
            ids: int item ids, any shape.
            labels: int `[slots]`, the batch's targets (0: none); read by `in_batch` only.
        """
        ids = ops.cast(ids, "int32")
        if self.sampler == "uniform":
            real = ops.logical_and(ids >= NUM_RESERVED_IDS, ids < self.num_items)
            return ops.where(real, 1.0 / (self.num_items - NUM_RESERVED_IDS), 0.0)
        if self.sampler == "in_batch":
            labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
            labelled = ops.cast(ops.not_equal(labels, PAD_ID), "float32")
            counts = ops.scatter(ops.expand_dims(labels, 1), labelled, (self.num_items,))
            return ops.divide_no_nan(ops.take(counts, ids, axis=0), ops.sum(labelled))
        return ops.take(ops.convert_to_tensor(self._probabilities), ids, axis=0)

    def candidate_logits(self, target_logits: Any, negative_logits: Any, labels: Any, negative_ids: Any) -> tuple:
        """The logits the cross-entropy sees and their one-hot labels, `[slots, 1 + N]` (`1 + k` with `hard_negatives`).

        The target is column 0 before hard-negative mining (which may reorder
        the columns; the labels follow).
        """
        target_logits = ops.cast(target_logits, "float32")
        negative_logits = ops.cast(negative_logits, "float32")
        labels = ops.cast(labels, "int32")
        negative_ids = ops.cast(negative_ids, "int32")
        logits = ops.concatenate([ops.expand_dims(target_logits, -1), negative_logits], axis=-1)
        # Any number of negatives can be scored (`num_negatives` is the number `draw` samples).
        one_hot = ops.concatenate(
            [ops.ones_like(ops.expand_dims(target_logits, -1)), ops.zeros_like(negative_logits)], axis=-1
        )
        if self._correction != "none":
            negative_q = ops.broadcast_to(
                ops.expand_dims(self.probabilities(negative_ids, labels), 0), ops.shape(negative_logits)
            )
            if self._correction == "negatives":
                # The target keeps its logit and a negative loses log(N q): the same softmax as the target gaining
                # log N and the negatives losing log q (probabilities stay in (0, 1], as the keras-rs layer needs).
                count = ops.cast(ops.shape(negative_logits)[-1], negative_q.dtype)
                target_q = ops.ones_like(ops.expand_dims(target_logits, -1)) / count
            else:
                target_q = ops.expand_dims(self.probabilities(labels, labels), -1)
            logits = self.probability_correction(logits, ops.concatenate([target_q, negative_q], axis=-1))
        if self.remove_accidental_hits:
            candidate_ids = ops.concatenate(
                [
                    ops.expand_dims(labels, -1),
                    ops.broadcast_to(ops.expand_dims(negative_ids, 0), ops.shape(negative_logits)),
                ],
                axis=-1,
            )
            logits = self.hit_removal(logits, one_hot, candidate_ids)
        if self.hard_negative_mining is not None:
            logits, one_hot = self.hard_negative_mining(logits, one_hot)
        return logits, one_hot

    def call(self, target_logits: Any, negative_logits: Any, labels: Any, negative_ids: Any) -> Any:
        logits, one_hot = self.candidate_logits(target_logits, negative_logits, labels, negative_ids)
        per_slot = ops.categorical_crossentropy(one_hot, logits, from_logits=True)
        return ops.where(ops.not_equal(ops.cast(labels, "int32"), PAD_ID), per_slot, 0.0)

    def compute_output_shape(self, target_shape: Any, *args: Any, **kwargs: Any) -> Any:
        return tuple(target_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        counts = self.item_counts
        if counts is not None:
            # Whole counts (as `item_popularity` gives them) are written as ints.
            counts = [int(c) for c in counts] if np.all(counts == np.round(counts)) else [float(c) for c in counts]
        config.update(
            {
                "num_items": self.num_items,
                "num_negatives": self.num_negatives,
                "sampler": self.sampler,
                "sampler_exponent": self.sampler_exponent,
                "item_counts": counts,
                "hard_negatives": self.hard_negatives,
                "logq_correction": self.logq_correction,
                "remove_accidental_hits": self.remove_accidental_hits,
                "seed": self.seed,
            }
        )
        return config
