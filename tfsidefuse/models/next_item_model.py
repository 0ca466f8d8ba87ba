"""The next-item task: turns any backbone into a trainable recommender."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfsidefuse.data.schema import NUM_RESERVED_IDS
from tfsidefuse.losses import NextItemCrossEntropy
from tfsidefuse.metrics import ranking_metrics, shared_ranks
from tfsidefuse.models.backbone import Backbone

TRAIN_ON = ("all_positions", "last_position")
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
      `train_on="all_positions"` (one left-padded sequence per user, as S3-Rec).
    - last position, `[batch, num_items]`: the prediction after the most
      recent item (the last slot of left-padded inputs), with labels
      `[batch]`; the default for inference, and for training with
      `train_on="last_position"` (every prefix is an example, as RecBole).
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
    training, the backbone's auxiliary objectives
    (`Backbone.auxiliary_loss`, which sees the batch's labels) and any loss
    it adds with `add_loss` are added to the next-item loss.

    Args:
        backbone: a `tfsidefuse.models.Backbone`.
        train_on: `"all_positions"` or `"last_position"`, which output
            `fit` trains.
        exclude_history: at inference, never recommend items already in the
            input sequence. Off by default: RecBole's full ranking keeps them.
        train_metrics: also compute the compiled metrics on the training
            batches in `fit` (the training logs then carry `hr@10` etc.
            beside `loss`). Off by default: only the loss is tracked there.
        **kwargs: standard model arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"` `[batch, seq_len]` (left-padded) and
            the other inputs the backbone uses.
        training: bool, whether dropout is active.
        all_positions: bool, logits at every slot instead of the last one.
            Defaults to `training and train_on == "all_positions"`.

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
        train_on: str = "all_positions",
        exclude_history: bool = False,
        train_metrics: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(backbone, Backbone):
            raise ValueError(f"`backbone` must be a `tfsidefuse.models.Backbone`. Received: backbone={backbone!r}")
        if train_on not in TRAIN_ON:
            raise ValueError(f"`train_on` must be one of {TRAIN_ON}. Received: train_on={train_on!r}")
        if not isinstance(exclude_history, bool):
            raise ValueError(f"`exclude_history` must be a bool. Received: exclude_history={exclude_history!r}")
        if not isinstance(train_metrics, bool):
            raise ValueError(f"`train_metrics` must be a bool. Received: train_metrics={train_metrics!r}")
        self.backbone = backbone
        self.train_on = train_on
        self.exclude_history = exclude_history
        self.train_metrics = train_metrics

    def build(self, inputs_shape: Any = None) -> None:
        if not self.backbone.built:
            self.backbone.build(inputs_shape)
        self.built = True

    def call(self, inputs: dict[str, Any], training: bool | None = None, all_positions: bool | None = None) -> Any:
        packed = False
        if all_positions is None:
            all_positions = bool(training) and self.train_on == "all_positions"
            packed = all_positions and self._packs_positions()
        inputs = self._sanitize(inputs, keep_last=not all_positions)
        # Read by `compute_metrics`, traced in the same step right after this call.
        object.__setattr__(self, "_training_call", bool(training))
        if not all_positions and self.backbone.supports_last_position_only:
            hidden = self.backbone(inputs, training=training, last_position_only=True)  # [batch, 1, d]
        else:
            hidden = self.backbone(inputs, training=training)
        if training:
            # Read back by `compute_loss` in the same traced step, for the backbone's auxiliary objectives.
            object.__setattr__(self, "_training_context", (inputs, hidden))
        if packed:
            # Score only the real (non-padding) slots: [num_real_slots, d].
            flat = ops.reshape(hidden, (-1, ops.shape(hidden)[-1]))
            hidden = ops.take(flat, self._real_slots(inputs), axis=0)
        elif not all_positions:
            hidden = hidden[:, -1, :]
        logits = self._logits(hidden)
        if all_positions or training:
            return logits
        return self._exclude(logits, inputs["item_ids"])

    def _logits(self, hidden: Any) -> Any:
        """Float32 scores `H E^T` of hidden states `[..., d]` against the item table, `[..., num_items]`."""
        table = ops.cast(self.backbone.item_table(), hidden.dtype)
        return ops.cast(ops.matmul(hidden, ops.transpose(table)), "float32")

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

    def _slot_labels(self, x: Any, y: Any) -> Any:
        """The labels of the outputs of the latest `call`: the next-item labels given with the batch."""
        return y

    def _scored_slots(self, x: Any, labels: Any) -> Any:
        """Flat indices of the `[batch, seq_len]` slots that `call` scores when it packs them: the real ones."""
        return self._real_slots(x)

    def _pack(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> tuple[Any, Any]:
        """Selects the labels (and weights) of the slots that `call` scored when it packed them."""
        if y is None or len(ops.shape(y)) != 2 or len(ops.shape(y_pred)) != 2:
            return y, sample_weight
        slots = self._scored_slots(x, y)
        y = ops.take(ops.reshape(y, (-1,)), slots, axis=0)
        if sample_weight is not None and len(ops.shape(sample_weight)) == 2:
            sample_weight = ops.take(ops.reshape(sample_weight, (-1,)), slots, axis=0)
        return y, sample_weight

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels = self._slot_labels(x, y)
        y, sample_weight = self._pack(x, labels, y_pred, sample_weight)
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        context = getattr(self, "_training_context", None)
        if training and labels is not None and context is not None:
            object.__setattr__(self, "_training_context", None)
            inputs, hidden = context
            for value in self.backbone.auxiliary_loss(inputs, labels, hidden).values():
                loss = loss + ops.cast(value, loss.dtype)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        skip = getattr(self, "_training_call", False) and not self.train_metrics
        if skip and (self._compile_metrics is None or self._compile_metrics.built):
            # A training step: only the loss (tracked by the trainer itself), no label packing.
            return {m.name: m.result() for m in self.metrics if m.name == "loss"}
        y, sample_weight = self._pack(x, self._slot_labels(x, y), y_pred, sample_weight)
        if skip:
            # Built all the same (once, at the first trace): Keras reads their unused results at the epoch's end.
            self._compile_metrics.build(y, y_pred)
            return {m.name: m.result() for m in self.metrics if m.name == "loss"}
        # The ranking metrics share one rank per example instead of ranking the full item set each.
        with shared_ranks():
            return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _exclude(self, logits: Any, item_ids: Any) -> Any:
        num_items = self.backbone.num_items
        excluded = ops.expand_dims(ops.arange(num_items) < NUM_RESERVED_IDS, axis=0)
        if self.exclude_history:
            ids = ops.reshape(ops.cast(item_ids, "int32"), (-1,))
            batch_size, seq_len = ops.shape(item_ids)[0], ops.shape(item_ids)[1]
            rows = ops.repeat(ops.arange(batch_size, dtype="int32"), seq_len)
            counts = ops.scatter(ops.stack([rows, ids], axis=1), ops.ones_like(ids), (batch_size, num_items))
            excluded = ops.logical_or(excluded, counts > 0)
        return ops.where(excluded, EXCLUDED_LOGIT, logits)

    def top_k(self, inputs: dict[str, Any], k: int = 10) -> tuple[Any, Any]:
        """The `k` best items after the last position of each sequence.

        Args:
            inputs: the model's input dict.
            k: number of items to return.

        Returns:
            `(scores, ids)`, both `[batch, k]`, best first; padding and OOV
            (and, with `exclude_history`, history items) are never returned
            unless fewer than `k` other items exist.
        """
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
            "train_on": self.train_on,
            "exclude_history": self.exclude_history,
            "train_metrics": self.train_metrics,
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NextItemModel:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
