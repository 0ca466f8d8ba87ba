"""The next-item task: turns any backbone into a trainable recommender."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from tfsidefuse import replicas
from tfsidefuse.config import OBJECTIVES
from tfsidefuse.data.schema import NUM_RESERVED_IDS, OOV_ID, PAD_ID
from tfsidefuse.layers.rows import take_rows
from tfsidefuse.layers.sampled_softmax import SampledSoftmax
from tfsidefuse.losses import NextItemCrossEntropy
from tfsidefuse.metrics import ranking_metrics, shared_ranks
from tfsidefuse.models.auxiliary_head import AuxiliaryHead
from tfsidefuse.models.backbone import Backbone

#: Objectives whose training labels are per position (`[batch, seq_len]`); `"prefix"` has one label per example.
POSITION_OBJECTIVES = ("all_positions", "all_targets")
#: The `objective` of the `train_on` argument of version 0.2.0, in saved configs.
LEGACY_TRAIN_ON = {"all_positions": "all_positions", "last_position": "prefix"}
# Score given to items that must never be recommended (padding, OOV, history).
EXCLUDED_LOGIT = -1e9


@keras.saving.register_keras_serializable(package="tfsidefuse")
class NextItemModel(keras.Model):
    """Next-item recommender: full softmax over all items, tied to the item table.

    The backbone maps the input dict to hidden states `H [batch, seq_len, d]`;
    the model scores them against the backbone's item table `E`
    (`backbone.item_table()`, `[num_items, d]`): `logits = H E^T`, float32.

    Two outputs, chosen by `all_positions` in `call`:

    - all positions, `[batch, seq_len, num_items]`: one next-item prediction
      per slot, trained with labels `[batch, seq_len]` (`0` where a slot has no
      target, e.g. padding); the default for training with
      `objective="all_positions"` (one left-padded sequence per user, as
      S3-Rec) or `"all_targets"` (windows of it).
    - last position, `[batch, num_items]`: the prediction after the most
      recent item (the last slot of left-padded inputs), with labels
      `[batch]`; the default for inference, and for training with
      `objective="prefix"` (every prefix is an example, as RecBole).
      At inference (`training` false) the padding and OOV columns, and with
      `exclude_history` the items of the input sequence, are set to `-1e9`.
      During training the full softmax keeps every column, as RecBole.

    `compile()` without arguments uses Adam(1e-3), sparse categorical
    cross-entropy from logits ignoring label 0, and full-ranking HR@K, NDCG@K
    (K = 5, 10, 20) and MRR; any argument overrides its default. The ranking
    metrics are computed by `evaluate` and on `fit`'s validation data; on the
    training batches only the loss is tracked unless `train_metrics` is set
    (ranking every training slot against every item costs about a seventh of
    a training step, and a training-set HR@K is not what model selection
    needs). During
    training, the losses of the auxiliary `heads` (the papers' auxiliary
    objectives, which see the batch's labels and the backbone's outputs) and
    any loss the backbone adds with `add_loss` are added to the next-item
    loss.

    Args:
        backbone: a `tfsidefuse.models.Backbone`.
        objective: the training objective whose examples `fit` gets, as
            `training.objective` of a config and `objective` of
            `tfsidefuse.data.pipeline.make_dataset`: `"all_positions"` or
            `"all_targets"` (labels at every position: the output at every
            slot is trained) or `"prefix"` (one label per example: the last
            slot's output is trained).
        exclude_history: at inference, never recommend items already in the
            input sequence. Off by default: RecBole's full ranking keeps them.
        train_metrics: also compute the compiled metrics on the training
            batches in `fit` (the training logs then carry `hr@10` etc.
            beside `loss`). Off by default: only the loss is tracked there.
        sampled_softmax: a `tfsidefuse.layers.SampledSoftmax` to train with
            the sampled softmax instead of the full one: in `fit`, the
            training outputs hold the scored vectors (`[slots, d]`, the
            inputs of `score_items`) and the step's draws, and the loss
            scores them against each slot's target and the step's shared
            sampled negatives (the compiled loss then serves evaluation
            only, where every item is ranked). `None` (default): the full
            softmax.
        heads: `tfsidefuse.models.AuxiliaryHead`s, the auxiliary objectives
            added to the training loss (`build_model` gives each paper's
            model its own: `DIFSRAttributeHead`, `ASIFAlignmentHead`,
            `COMIFAlignmentHead`); none by default.
        **kwargs: standard model arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"` `[batch, seq_len]` (left-padded) and
            the other inputs the backbone uses.
        training: bool, whether dropout is active. `training=True` without
            `all_positions` is the training call of `fit`, see Returns.
        all_positions: bool, logits at every slot instead of the last one.
            Defaults to `False` (for the training call: whether the
            `objective` has labels at every position).

    Returns:
        The logits, `[batch, num_items]` or `[batch, seq_len, num_items]`.
        The training call (`training=True`, `all_positions` not given)
        returns instead the dict that `compute_loss` and `compute_metrics`
        read in the same step: `"logits"` of the trained slots (with
        `sampled_softmax`: their scoring `"vectors"` and the step's
        `"draws"`), `"slots"` (flat indices of the scored `[batch, seq_len]`
        slots, where only the real ones are scored), `"inputs"` (the
        sanitized inputs) and `"backbone_outputs"` (the backbone's dict, read
        by the `heads`).

    Example:

    ```python
    model = NextItemModel(SASRecBackbone(num_items=1000, max_len=50))
    model.compile()
    model.fit(train_ds, validation_data=valid_ds, epochs=10)
    scores, ids = model.top_k({"item_ids": sequences}, k=10)
    ```

    Reference:
        Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018;
        Zhao et al., "RecBole: Towards a Unified, Comprehensive and Efficient
        Framework for Recommendation Algorithms", CIKM 2021.
    """

    def __init__(
        self,
        backbone: Backbone,
        objective: str = "all_positions",
        exclude_history: bool = False,
        train_metrics: bool = False,
        sampled_softmax: SampledSoftmax | None = None,
        heads: list[AuxiliaryHead] | tuple[AuxiliaryHead, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(backbone, Backbone):
            raise ValueError(f"`backbone` must be a `tfsidefuse.models.Backbone`. Received: backbone={backbone!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}. Received: objective={objective!r}")
        if not isinstance(exclude_history, bool):
            raise ValueError(f"`exclude_history` must be a bool. Received: exclude_history={exclude_history!r}")
        if not isinstance(train_metrics, bool):
            raise ValueError(f"`train_metrics` must be a bool. Received: train_metrics={train_metrics!r}")
        if sampled_softmax is not None:
            if not isinstance(sampled_softmax, SampledSoftmax):
                raise ValueError(
                    "`sampled_softmax` must be a `tfsidefuse.layers.SampledSoftmax` or None. "
                    f"Received: sampled_softmax={sampled_softmax!r}"
                )
            if sampled_softmax.num_items != backbone.num_items:
                raise ValueError(
                    f"`sampled_softmax` samples from {sampled_softmax.num_items} item ids but the backbone has "
                    f"num_items={backbone.num_items}"
                )
        if isinstance(heads, AuxiliaryHead) or not all(isinstance(head, AuxiliaryHead) for head in heads):
            raise ValueError(f"`heads` must be a list of `tfsidefuse.models.AuxiliaryHead`s. Received: heads={heads!r}")
        self.sampled_softmax = sampled_softmax
        self.backbone = backbone
        self.heads = list(heads)
        self.objective = objective
        self.exclude_history = exclude_history
        self.train_metrics = train_metrics

    @property
    def labels_per_position(self) -> bool:
        """Whether the training labels are per position (`[batch, seq_len]`), else one per example (`[batch]`)."""
        return self.objective in POSITION_OBJECTIVES

    def build(self, inputs_shape: Any = None) -> None:
        if not self.backbone.built:
            self.backbone.build(inputs_shape)
        for head in self.heads:
            if not head.built:
                head.build()
        self.built = True

    def call(self, inputs: dict[str, Any], training: bool | None = None, all_positions: bool | None = None) -> Any:
        if training and all_positions is None:
            return self._training_outputs(inputs)
        all_positions = bool(all_positions)
        inputs = self._sanitize(inputs, keep_last=not all_positions)
        hidden = self._backbone_outputs(inputs, training, last_position_only=not all_positions)["sequence_output"]
        if not all_positions:
            hidden = hidden[:, -1, :]
        logits = self._logits(hidden)
        if all_positions or training:
            return logits
        return self._exclude(logits, inputs["item_ids"])

    def _backbone_outputs(self, inputs: dict[str, Any], training: bool | None, last_position_only: bool) -> Any:
        """The backbone's output dict; only the last slot's hidden state when that is all that is scored."""
        if last_position_only and self.backbone.supports_last_position_only:
            return self.backbone(inputs, training=training, last_position_only=True)  # [batch, 1, d]
        return self.backbone(inputs, training=training)

    def _training_outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The outputs of a training call: the scores `fit` trains on and what the loss needs besides.

        An objective with labels at every position (`"all_positions"`,
        `"all_targets"`) scores every slot (only the real ones, as `"slots"`,
        where dynamic shapes are allowed), `"prefix"` the last one; see
        `_scored_outputs` for the scores.
        """
        all_positions = self.labels_per_position
        inputs = self._sanitize(inputs, keep_last=not all_positions)
        backbone_outputs = self._backbone_outputs(inputs, True, last_position_only=not all_positions)
        outputs = {"inputs": inputs, "backbone_outputs": backbone_outputs}
        hidden = backbone_outputs["sequence_output"]
        if all_positions and self._packs_positions():
            # Score only the real (non-padding) slots: [num_real_slots, d].
            outputs["slots"] = self._real_slots(inputs)
            hidden = ops.take(ops.reshape(hidden, (-1, ops.shape(hidden)[-1])), outputs["slots"], axis=0)
        elif not all_positions:
            hidden = hidden[:, -1, :]
        outputs.update(self._scored_outputs(hidden))
        return outputs

    def _scored_outputs(self, hidden: Any) -> dict[str, Any]:
        """`{"logits": ...}` of the scored hidden states, or with `sampled_softmax` `{"vectors", "draws"}`.

        The sampled softmax scores the scoring vectors in the loss, against
        the step's draws. They are drawn here, in the forward pass, where the
        seed generator's state is updated also in stateless (JAX) steps.
        """
        if self.sampled_softmax is None:
            return {"logits": self._logits(hidden)}
        return {"vectors": self.scoring_vectors(hidden), "draws": self.sampled_softmax.draw()}

    def _logits(self, hidden: Any) -> Any:
        """Float32 scores `H E^T` of hidden states `[..., d]` against the item table, `[..., num_items]`."""
        return self.score_items(self.scoring_vectors(hidden))

    # ----------------------------------------------------------------------------------------------------------------
    # Scoring: every logit of the task is `score_items(scoring_vectors(hidden))`, or a part of it.
    # ----------------------------------------------------------------------------------------------------------------

    def scoring_vectors(self, hidden: Any) -> Any:
        """The vectors `[..., d]` that are scored against the item table, from hidden states `[..., d]`.

        The hidden states themselves here; a task with an output head applies it.
        """
        return hidden

    def item_bias(self) -> Any:
        """A per-item output bias `[num_items]` added to the scores, or `None` (here: none)."""
        return None

    def score_items(self, vectors: Any, start: int | Any = 0, stop: int | Any | None = None, table: Any = None) -> Any:
        """Float32 scores of scoring vectors `[..., d]` against the items `start .. stop - 1`, `[..., stop - start]`.

        `score_items(scoring_vectors(h))` are the logits of `call`; a block of
        columns of them is `score_items(v, start, stop)`, so that the items can
        be ranked a block at a time.

        Args:
            vectors: the output of `scoring_vectors`, `[..., d]`.
            start: the first item id scored.
            stop: one past the last item id scored; `None` for `num_items`.
            table: the backbone's `item_table()`, when already computed.
        """
        table = self.backbone.item_table() if table is None else table
        if isinstance(start, int) and start == 0 and stop is None:
            bias = self.item_bias()
            scores = ops.cast(ops.matmul(vectors, ops.transpose(ops.cast(table, vectors.dtype))), "float32")
            return scores if bias is None else scores + bias
        stop = self.backbone.num_items if stop is None else stop
        return self._score_slice(vectors, start, stop - start, table)

    def _score_slice(self, vectors: Any, start: int | Any, size: int, table: Any) -> Any:
        """`score_items` of the `size` items from `start` (an int or a scalar int tensor: a dynamic slice)."""
        table = ops.convert_to_tensor(table)
        rows = ops.slice(table, (start, 0), (size, ops.shape(table)[1]))
        scores = ops.cast(ops.matmul(vectors, ops.transpose(ops.cast(rows, vectors.dtype))), "float32")
        bias = self.item_bias()
        return scores if bias is None else scores + ops.slice(ops.convert_to_tensor(bias), (start,), (size,))

    def score_item_ids(self, vectors: Any, item_ids: Any, table: Any = None) -> Any:
        """Float32 scores of scoring vectors `[n, d]` against the items `item_ids [k]`, shared by the rows, `[n, k]`."""
        table = self.backbone.item_table() if table is None else table
        rows = ops.cast(take_rows(table, item_ids), vectors.dtype)
        scores = ops.cast(ops.matmul(vectors, ops.transpose(rows)), "float32")
        bias = self.item_bias()
        return scores if bias is None else scores + ops.take(bias, item_ids, axis=0)

    def score_targets(self, vectors: Any, item_ids: Any, table: Any = None) -> Any:
        """Float32 score of each scoring vector `[n, d]` against its own item `item_ids [n]`, `[n]`."""
        table = self.backbone.item_table() if table is None else table
        rows = ops.cast(take_rows(table, item_ids), vectors.dtype)
        scores = ops.cast(ops.einsum("nd,nd->n", vectors, rows), "float32")
        bias = self.item_bias()
        return scores if bias is None else scores + ops.take(bias, item_ids, axis=0)

    # ----------------------------------------------------------------------------------------------------------------
    # Ranking a block of items at a time
    # ----------------------------------------------------------------------------------------------------------------

    def _inference_hidden(self, inputs: dict[str, Any]) -> tuple[Any, Any]:
        """The sanitized item ids and the hidden state scored at inference, `[batch, d]`: after the last item."""
        inputs = self._sanitize(inputs, keep_last=True)
        hidden = self._backbone_outputs(inputs, False, last_position_only=True)["sequence_output"]
        return inputs["item_ids"], hidden[:, -1, :]

    def rank_in_blocks(
        self,
        inputs: dict[str, Any],
        labels: Any = None,
        item_block: int = 4096,
        k: int = 0,
        excluded_ids: tuple[int, ...] = (PAD_ID, OOV_ID),
    ) -> dict[str, Any]:
        """Full ranking after the last position, scoring `item_block` items at a time.

        The hidden states are computed once; the items are then scored a
        block of `item_block` columns at a time (`score_items`, the float32
        logits of `call` with its exclusions: padding, OOV and, with
        `exclude_history`, the history at `-1e9`), and only per-example
        summaries are kept across blocks, so that memory grows with
        `batch x item_block` instead of `batch x num_items`:

        - `rank` (with `labels`): `1 + #{i not in excluded_ids, i != y:
          z_i > z_y}`, the optimistic rank of `tfsidefuse.metrics.target_ranks`
          (ties count for the target; `excluded_ids` never rank);
        - `target_logit` and `log_normalizer` (with `labels`): `z_y` and
          `logsumexp_i z_i` (a running maximum and sum), whose difference is
          the full-softmax cross-entropy;
        - `top_scores`, `top_ids` (with `k > 0`): the running top `k`, best
          first, ties to the lower id as `ops.top_k` over all items.

        Args:
            inputs: the model's input dict.
            labels: target ids `[batch]` (or `[batch, 1]`), or `None` for the top `k` only.
            item_block: items scored per block (the last block holds the rest).
            k: size of the running top-k list; 0 for none.
            excluded_ids: item ids that never take part in the rank.

        Returns:
            dict with the entries above, each `[batch]` or `[batch, k]`.
        """
        if isinstance(item_block, bool) or not isinstance(item_block, int) or item_block < 1:
            raise ValueError(f"`item_block` must be a positive int. Received: item_block={item_block!r}")
        num_items = self.backbone.num_items
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= num_items:
            raise ValueError(f"`k` must be an int in [0, num_items={num_items}]. Received: k={k!r}")
        item_ids, hidden = self._inference_hidden(inputs)
        vectors = self.scoring_vectors(hidden)
        table = self.backbone.item_table()
        batch_size = ops.shape(vectors)[0]
        block = min(item_block, num_items)
        excluded = sorted(set(excluded_ids))
        out: dict[str, Any] = {}

        target = None
        if labels is not None:
            labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
            target_ids = ops.clip(labels, 0, num_items - 1)
            target = self.score_targets(vectors, target_ids, table)
            # The target's logit as `_exclude` leaves it.
            target_hidden = target_ids < NUM_RESERVED_IDS
            if self.exclude_history:
                in_history = ops.any(ops.equal(item_ids, ops.expand_dims(target_ids, 1)), axis=1)
                target_hidden = ops.logical_or(target_hidden, in_history)
            target = ops.where(target_hidden, EXCLUDED_LOGIT, target)

        def update(state: tuple, start: Any, size: int) -> tuple:
            better, top, total, top_scores, top_ids = state
            columns = start + ops.arange(size, dtype="int32")  # [size]
            scores = self._exclude_block(self._score_slice(vectors, start, size, table), item_ids, start, size)
            if target is not None:
                counted = ops.expand_dims(columns, 0) != ops.expand_dims(target_ids, 1)
                for i in excluded:
                    counted = ops.logical_and(counted, ops.expand_dims(columns != i, 0))
                beats = ops.logical_and(scores > ops.expand_dims(target, 1), counted)
                better = better + ops.sum(ops.cast(beats, "float32"), axis=1)
                new_top = ops.maximum(top, ops.max(scores, axis=1))
                total = total * ops.exp(top - new_top) + ops.sum(ops.exp(scores - new_top[:, None]), axis=1)
                top = new_top
            if k:
                ids = ops.broadcast_to(ops.expand_dims(columns, 0), ops.shape(scores))
                top_scores, positions = ops.top_k(ops.concatenate([top_scores, scores], axis=1), k=k)
                top_ids = ops.take_along_axis(ops.concatenate([top_ids, ids], axis=1), positions, axis=1)
            return better, top, total, top_scores, top_ids

        lowest = float(np.finfo(np.float32).min)
        state = (
            ops.zeros((batch_size,), "float32"),
            ops.full((batch_size,), lowest, "float32"),
            ops.zeros((batch_size,), "float32"),
            ops.full((batch_size, k), lowest, "float32"),
            ops.full((batch_size, k), -1, "int32"),
        )
        full_blocks, rest = divmod(num_items, block)
        if full_blocks == 1:
            state = update(state, 0, block)
        elif full_blocks > 1:
            # A loop, not `full_blocks` independent matmuls: a graph runtime could run those all at once.
            state = ops.fori_loop(0, full_blocks, lambda i, s: update(s, ops.cast(i, "int32") * block, block), state)
        if rest:
            state = update(state, full_blocks * block, rest)
        better, top, total, top_scores, top_ids = state
        if target is not None:
            out.update({"rank": 1.0 + better, "target_logit": target, "log_normalizer": top + ops.log(total)})
        if k:
            out.update({"top_scores": top_scores, "top_ids": top_ids})
        return out

    def _exclude_block(self, scores: Any, item_ids: Any, start: Any, size: int) -> Any:
        """`_exclude` of the items `start .. start + size - 1` only: scores `[batch, size]`."""
        columns = start + ops.arange(size, dtype="int32")
        excluded = ops.expand_dims(columns < NUM_RESERVED_IDS, axis=0)
        if self.exclude_history:
            batch_size, seq_len = ops.shape(item_ids)[0], ops.shape(item_ids)[1]
            local = ops.reshape(ops.cast(item_ids, "int32"), (-1,)) - start
            # History items outside the block go to an extra column, dropped after the scatter.
            local = ops.where(ops.logical_and(local >= 0, local < size), local, size)
            rows = ops.repeat(ops.arange(batch_size, dtype="int32"), seq_len)
            counts = ops.scatter(ops.stack([rows, local], axis=1), ops.ones_like(local), (batch_size, size + 1))
            excluded = ops.logical_or(excluded, counts[:, :size] > 0)
        return ops.where(excluded, EXCLUDED_LOGIT, scores)

    # ----------------------------------------------------------------------------------------------------------------
    # Sampled softmax
    # ----------------------------------------------------------------------------------------------------------------

    def sampled_softmax_loss(self, vectors: Any, labels: Any, draws: Any, sample_weight: Any = None) -> Any:
        """The sampled softmax loss of scoring vectors against their targets and the negatives of `draws`.

        Args:
            vectors: scoring vectors, `[..., d]`.
            labels: int targets of `vectors`' shape without its last axis (0: no target).
            draws: the step's uniform numbers, `sampled_softmax.draw()`.
            sample_weight: optional weights of the labels' shape.

        Returns:
            float32 scalar: the mean over the slots with a target (weights applied to the sum).
        """
        sampler = self.sampled_softmax
        vectors = ops.reshape(vectors, (-1, ops.shape(vectors)[-1]))
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        table = self.backbone.item_table()
        negative_ids = sampler.sample(draws, labels)
        per_slot = sampler(
            self.score_targets(vectors, labels, table),
            self.score_item_ids(vectors, negative_ids, table),
            labels,
            negative_ids,
        )
        labelled = ops.cast(ops.not_equal(labels, PAD_ID), "float32")
        weighted = (
            per_slot if sample_weight is None else per_slot * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        )
        # Under tf.distribute, the mean over the labelled slots of the whole global batch (`tfsidefuse.replicas`).
        return ops.divide_no_nan(ops.sum(weighted), replicas.replica_sum(ops.sum(labelled)))

    def _num_input_ids(self) -> int:
        """Size of the id space accepted in `item_ids`; larger ids become the OOV id."""
        return self.backbone.num_items

    def _sanitize(self, inputs: dict[str, Any], keep_last: bool) -> dict[str, Any]:
        """Documented fallbacks for out-of-range input.

        - Item ids outside `[0, num_items)` (`_num_input_ids()`) become the OOV id 1 (an
          out-of-range gather is an error on CPU and silently zero on GPU).
        - Sequences longer than `max_len`: for last-position scoring only the
          most recent `max_len` events are kept; for all-position outputs,
          which must align with per-slot labels, a statically known longer
          length is an error.
        """
        if not isinstance(inputs, dict) or "item_ids" not in inputs:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"inputs must be a dict with an 'item_ids' entry; got {got}")
        ids = ops.convert_to_tensor(inputs["item_ids"])
        if len(ids.shape) != 2:
            raise ValueError(f"'item_ids' must have shape [batch, seq_len]; got shape {tuple(ids.shape)}")
        if "int" not in str(ids.dtype):
            raise ValueError(f"'item_ids' must be integer ids; got dtype {keras.backend.standardize_dtype(ids.dtype)}")
        ids = ops.cast(ids, "int32")
        in_range = ops.logical_and(ids >= 0, ids < self._num_input_ids())
        out = dict(inputs)
        out["item_ids"] = ops.where(in_range, ids, ops.ones_like(ids))
        max_len = self.backbone.max_len
        seq_len = ids.shape[1]
        if keep_last:
            out = {k: (v[:, -max_len:] if len(ops.shape(v)) == 2 else v) for k, v in out.items()}
        elif seq_len is not None and seq_len > max_len:
            raise ValueError(
                f"'item_ids' has {seq_len} slots but the model was built for max_len={max_len}; "
                "truncate sequences to the most recent max_len events (the data pipeline does)"
            )
        return out

    def _packs_positions(self) -> bool:
        """Whether all-position training scores the real slots only.

        Padding slots carry no target, and on short-sequence data (Amazon: 9
        items on average, padded to 50) they are most of the `[B, T, V]`
        logits. Selecting the real slots gives dynamic shapes, which XLA and
        JAX's `jit` cannot compile; there every slot is scored and the
        padding labels (0) are ignored by the loss instead.
        """
        return keras.backend.backend() == "tensorflow" and not getattr(self, "jit_compile", False)

    @staticmethod
    def _real_slots(inputs: dict[str, Any]) -> Any:
        mask = ops.reshape(ops.not_equal(inputs["item_ids"], 0), (-1,))
        return ops.nonzero(mask)[0]

    def _pack(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> tuple[Any, Any]:
        """Selects the labels (and weights) of the slots that the outputs `y_pred` score.

        A training call's outputs (a dict) name the slots they packed
        (`"slots"`) and, for the Cloze task, carry their own labels
        (`"labels"`), which replace `y`.
        """
        slots = None
        if isinstance(y_pred, dict):
            y = y_pred.get("labels", y)
            slots = y_pred.get("slots")
            y_pred = y_pred["logits"] if "logits" in y_pred else y_pred["vectors"]
        if y is None or len(ops.shape(y)) != 2 or len(ops.shape(y_pred)) != 2:
            return y, sample_weight
        if slots is None:
            if not self._packs_positions():
                # Nothing was packed (JAX, XLA): all-position outputs are [batch, T, items]. Two-dimensional labels
                # with a [batch, items] output only meet in Keras' symbolic build, which on JAX pairs the training
                # labels with an inference output (the last position): its labels are then the last column.
                last_column = sample_weight is not None and len(ops.shape(sample_weight)) == 2
                return y[:, -1], (sample_weight[:, -1] if last_column else sample_weight)
            slots = self._real_slots(x)
        y = ops.take(ops.reshape(y, (-1,)), slots, axis=0)
        if sample_weight is not None and len(ops.shape(sample_weight)) == 2:
            sample_weight = ops.take(ops.reshape(sample_weight, (-1,)), slots, axis=0)
        return y, sample_weight

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The next-item loss of the outputs `y_pred` of `call`, plus the losses of the heads in training.

        A training call's outputs are a dict (see `_training_outputs`): its
        scores (`"logits"`, or `"vectors"` and `"draws"` for the sampled
        softmax), the slots and labels they belong to, and the backbone's
        outputs, which the `heads` read. Any other output is scored by the
        compiled loss alone.
        """
        # Under tf.distribute, a training step's loss is the mean over the labelled slots of the global batch.
        with replicas.training_step(training):
            return self._compute_loss_in_step(x, y, y_pred, sample_weight, training)

    def _compute_loss_in_step(self, x, y, y_pred, sample_weight, training):
        outputs = y_pred if isinstance(y_pred, dict) else {"logits": y_pred}
        labels = outputs.get("labels", y)
        y, sample_weight = self._pack(x, y, y_pred, sample_weight)
        if "vectors" in outputs and y is not None:
            loss = self.sampled_softmax_loss(outputs["vectors"], y, outputs["draws"], sample_weight)
            for extra in self.losses:
                loss = loss + ops.cast(self._aggregate_additional_loss(extra), loss.dtype)
        else:
            scores = outputs["logits"] if "logits" in outputs else outputs["vectors"]
            loss = super().compute_loss(x=x, y=y, y_pred=scores, sample_weight=sample_weight, training=training)
        if training and labels is not None and "backbone_outputs" in outputs:
            for value in self.auxiliary_losses(outputs, labels).values():
                # Divided by the replicas under tf.distribute, as Keras divides the next-item loss.
                loss = loss + replicas.per_replica_share(ops.cast(value, loss.dtype))
        return loss

    def auxiliary_losses(self, outputs: dict[str, Any], labels: Any) -> dict[str, Any]:
        """The losses of the `heads` on the outputs of a training call, weights included, by name.

        Args:
            outputs: the dict of a training call (`call(inputs, training=True)`).
            labels: the batch's labels (the Cloze labels are taken from `outputs`).

        Returns:
            dict name -> float32 scalar, over all heads; empty without heads.
        """
        labels = outputs.get("labels", labels)
        losses = {}
        for head in self.heads:
            losses.update(head(outputs["backbone_outputs"], outputs["inputs"], labels, backbone=self.backbone))
        return losses

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        training_call = isinstance(y_pred, dict)
        skip = training_call and not self.train_metrics
        if skip and (self._compile_metrics is None or self._compile_metrics.built):
            # A training step: only the loss (tracked by the trainer itself), no label packing.
            return {m.name: m.result() for m in self.metrics if m.name == "loss"}
        y, sample_weight = self._pack(x, y, y_pred, sample_weight)
        if training_call:
            outputs = y_pred
            y_pred = outputs["logits"] if "logits" in outputs else outputs["vectors"]
            if "logits" not in outputs and self.train_metrics:
                # Sampled-softmax training returned the scoring vectors: the metrics rank every item.
                y_pred = self.score_items(y_pred)
        if skip:
            # Built all the same (once, at the first trace): Keras reads their unused results at the epoch's end.
            self._compile_metrics.build(y, y_pred)
            return {m.name: m.result() for m in self.metrics if m.name == "loss"}
        # The ranking metrics share one rank per example instead of ranking the full item set each.
        with shared_ranks():
            return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _exclude(self, logits: Any, item_ids: Any) -> Any:
        return self._exclude_block(logits, item_ids, 0, self.backbone.num_items)

    def top_k(self, inputs: dict[str, Any], k: int = 10, item_block: int | None = None) -> tuple[Any, Any]:
        """The `k` best items after the last position of each sequence.

        Args:
            inputs: the model's input dict.
            k: number of items to return.
            item_block: score this many items at a time, keeping a running
                top `k` (`rank_in_blocks`), for catalogues whose
                `[batch, num_items]` scores do not fit in memory; `None`
                scores all items at once. The result is the same.

        Returns:
            `(scores, ids)`, both `[batch, k]`, best first; padding and OOV
            (and, with `exclude_history`, history items) are never returned
            unless fewer than `k` other items exist.
        """
        if item_block is not None:
            ranked = self.rank_in_blocks(inputs, item_block=item_block, k=k)
            return ranked["top_scores"], ranked["top_ids"]
        logits = self(inputs, training=False, all_positions=False)
        return ops.top_k(logits, k=k)

    def compile(
        self,
        optimizer: Any = None,
        loss: Any = None,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        """Configures training; every argument left to `None` gets a working default.

        Args:
            optimizer: defaults to `keras.optimizers.Adam(1e-3)`.
            loss: defaults to `tfsidefuse.losses.NextItemCrossEntropy()`:
                the full softmax over all items, with label 0 meaning "no
                target at this slot" (the value of Keras'
                `SparseCategoricalCrossentropy(from_logits=True,
                ignore_class=0)`, computed without its masked copy of the
                logits).
            metrics: defaults to `tfsidefuse.metrics.ranking_metrics()`
                (HR@K, NDCG@K for K in 5, 10, 20, and MRR); `[]` for none.
            **kwargs: other `keras.Model.compile` arguments.
        """
        if optimizer is None:
            optimizer = keras.optimizers.Adam(learning_rate=1e-3)
        if loss is None:
            loss = NextItemCrossEntropy()
        if metrics is None:
            metrics = ranking_metrics()
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        # Keras skips models with a custom `compile`; ours takes the same
        # arguments, so a reloaded model is compiled (and its optimizer state
        # restored) as the saved one.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self) -> dict[str, Any]:
        # Not chained to `keras.Model.get_config`, which only handles
        # functional models and simple constructors.
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "objective": self.objective,
            "exclude_history": self.exclude_history,
            "train_metrics": self.train_metrics,
            "sampled_softmax": (
                None if self.sampled_softmax is None else keras.saving.serialize_keras_object(self.sampled_softmax)
            ),
            "heads": [keras.saving.serialize_keras_object(head) for head in self.heads],
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NextItemModel:
        config = dict(config)
        if "train_on" in config:
            # A config saved by version 0.2.0, whose `train_on` named the trained output.
            train_on = config.pop("train_on")
            if train_on not in LEGACY_TRAIN_ON:
                raise ValueError(f"`train_on` must be one of {tuple(LEGACY_TRAIN_ON)}. Received: train_on={train_on!r}")
            config.setdefault("objective", LEGACY_TRAIN_ON[train_on])
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("sampled_softmax") is not None:
            config["sampled_softmax"] = keras.saving.deserialize_keras_object(config["sampled_softmax"])
        config["heads"] = [keras.saving.deserialize_keras_object(head) for head in config.get("heads", [])]
        return cls(**config)
