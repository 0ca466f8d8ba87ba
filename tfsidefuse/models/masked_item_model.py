"""The Cloze (masked-item) task: BERT4Rec-style training of bidirectional backbones."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfsidefuse.data.schema import OOV_ID, PAD_ID
from tfsidefuse.layers._checks import check_seed
from tfsidefuse.models.backbone import Backbone
from tfsidefuse.models.next_item_model import NextItemModel

#: The `task` class attribute of the backbones trained with the Cloze objective.
CLOZE_TASK = "cloze"
ITEM_IDS_KEY = "item_ids"


@keras.saving.register_keras_serializable(package="tfsidefuse")
class MaskedItemModel(NextItemModel):
    """Cloze (masked-item) recommender: predicts randomly masked items from both sides.

    The backbone is bidirectional and understands the `[MASK]` token, whose
    id is `num_items` (one past the last item id; the backbone declares
    `task = "cloze"` and embeds it, see `BERT4RecBackbone`).

    Training (`fit`). Each training window `s` (the inputs, extended by the
    batch's last next-item label so that the most recent training item is
    part of it; the oldest slot is dropped beyond `max_len`) is re-masked at
    every step: each real slot is selected independently with probability
    `mask_prob`; with probability `ft_ratio` a window has only its last slot
    selected instead (masking the last item as at inference); a window with
    no selected slot gets one uniformly drawn real slot. Selected slots
    `M` get the `[MASK]` id (and, with `mask_behaviour_at_masked_slots`,
    the OOV id in every interaction feature); the loss is the full-softmax
    cross-entropy at the masked slots against the original ids, averaged
    over the masked slots of the batch:

    `o_t = LN(GELU(h_t W^P + b^P))` (with `bert_head`, else `o_t = h_t`),
    `z_t = o_t E^T + b^O` over the `num_items` item rows of
    `backbone.item_table()` (the `[MASK]` embedding is never scored; the
    padding column stays in the softmax, as RecBole),
    `L = -1/|M| sum_{(b,t) in M} log softmax(z_{b,t})_{s_{b,t}}`.

    Masks are drawn with `keras.random` from the model's `SeedGenerator`, so
    they differ at every step, also in a compiled train function.
    Training batches may carry next-item labels `[batch, seq_len]`
    (all-position data) or `[batch]` (prefix data, RecBole's Cloze over
    every prefix); only their last item is used. Sample weights are not
    supported in training.

    Inference. The history (its most recent `max_len - 1` events) gets a
    `[MASK]` slot appended after its last item (interaction features get the
    OOV id there) and the output at that slot ranks all items, with the
    padding and OOV columns (and, with `exclude_history`, history items) set
    to `-1e9`, so `top_k` and the full-ranking evaluation work unchanged.
    `all_positions=True` scores every slot of the given inputs as they are
    (they may hold `[MASK]` ids).

    Args:
        backbone: a bidirectional `tfsidefuse.models.Backbone` with
            `task = "cloze"`.
        mask_prob: probability `rho` in `(0, 1]` that a real slot is masked.
        ft_ratio: probability in `[0, 1]` that a window has only its last
            item masked.
        mask_behaviour_at_masked_slots: also hide the interaction features
            (OOV id) at masked slots; by default they stay known.
        bert_head: apply BERT4Rec's output head (dense, GELU, layer norm,
            output bias); `False` scores the hidden states directly.
        exclude_history: at inference, never recommend items already in the
            input sequence.
        seed: seed of the masking `SeedGenerator`; `None` draws one.
        **kwargs: `train_metrics`, `sampled_softmax` and `heads` (see
            `NextItemModel`; with `sampled_softmax` the masked slots are
            trained against the target and the step's sampled negatives; the
            heads see the masked inputs and the Cloze labels), and the
            standard model arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"` `[batch, seq_len]` (left-padded) and
            the other inputs the backbone uses.
        training: bool; `True` masks the inputs and returns the training
            outputs (see `NextItemModel`): the logits (with `sampled_softmax`:
            the scoring vectors) at the masked slots, `[num_masked,
            num_items]` (or at every slot, `[batch, seq_len, num_items]`,
            where dynamic shapes cannot be compiled: XLA, JAX), with their
            Cloze `"labels"`.
        all_positions: bool, at inference: logits at every slot of the
            unmodified inputs instead of at an appended `[MASK]`.

    Example:

    ```python
    model = MaskedItemModel(BERT4RecBackbone(num_items=1000, max_len=50), mask_prob=0.6)
    model.compile()
    model.fit(train_ds, validation_data=valid_ds, epochs=10)
    scores, ids = model.top_k({"item_ids": sequences}, k=10)
    ```

    Reference:
        Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional
        Encoder Representations from Transformer", CIKM 2019; Liu et al.,
        "Non-invasive Self-attention for Side Information Fusion in
        Sequential Recommendation", AAAI 2021 (NOVA-BERT).
    """

    def __init__(
        self,
        backbone: Backbone,
        mask_prob: float = 0.6,
        ft_ratio: float = 0.0,
        mask_behaviour_at_masked_slots: bool = False,
        bert_head: bool = True,
        exclude_history: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, exclude_history=exclude_history, **kwargs)
        if getattr(backbone, "task", None) != CLOZE_TASK:
            raise ValueError(
                f"`backbone` must declare the Cloze task (class attribute `task = {CLOZE_TASK!r}`) and embed the "
                f"[MASK] id num_items. Received: backbone={backbone!r}"
            )
        if isinstance(mask_prob, bool) or not isinstance(mask_prob, (int, float)) or not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"`mask_prob` must be in (0, 1]. Received: mask_prob={mask_prob!r}")
        if isinstance(ft_ratio, bool) or not isinstance(ft_ratio, (int, float)) or not 0.0 <= ft_ratio <= 1.0:
            raise ValueError(f"`ft_ratio` must be in [0, 1]. Received: ft_ratio={ft_ratio!r}")
        for name, value in (
            ("mask_behaviour_at_masked_slots", mask_behaviour_at_masked_slots),
            ("bert_head", bert_head),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
        check_seed(seed)
        self.mask_prob = float(mask_prob)
        self.ft_ratio = float(ft_ratio)
        self.mask_behaviour_at_masked_slots = mask_behaviour_at_masked_slots
        self.bert_head = bert_head
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="mask_seed_generator")

    @property
    def mask_token_id(self) -> int:
        """The id of the `[MASK]` token: `num_items`, one past the last item id."""
        return self.backbone.num_items

    def build(self, inputs_shape: Any = None) -> None:
        super().build(inputs_shape)
        if self.bert_head:
            hidden_dim = self.backbone.hidden_dim
            self.head_dense = keras.layers.Dense(
                hidden_dim,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                dtype=self.dtype_policy,
                name="head_dense",
            )
            self.head_dense.build((None, hidden_dim))
            self.head_layer_norm = keras.layers.LayerNormalization(
                epsilon=getattr(self.backbone, "layer_norm_epsilon", 1e-12),
                dtype=self.dtype_policy,
                name="head_layer_norm",
            )
            self.head_layer_norm.build((None, hidden_dim))
            self.output_bias = self.add_weight(
                name="output_bias",
                shape=(self.backbone.num_items,),
                initializer="zeros",
                dtype="float32",
                autocast=False,
            )
        self.built = True

    def call(self, inputs: dict[str, Any], training: bool | None = None, all_positions: bool | None = None) -> Any:
        if training:
            return self._training_outputs(inputs)
        if all_positions:
            return super().call(inputs, training=training, all_positions=True)
        item_ids, hidden = self._inference_hidden(inputs, training=training)
        return self._exclude(self._logits(hidden), item_ids)

    def _num_input_ids(self) -> int:
        return self.backbone.num_items + 1

    def _inference_hidden(self, inputs: dict[str, Any], training: bool | None = False) -> tuple[Any, Any]:
        inputs = self._sanitize(inputs, keep_last=True)
        query = self._append_slot(inputs, self.mask_token_id)
        return inputs[ITEM_IDS_KEY], self.backbone(query, training=training)["sequence_output"][:, -1, :]

    def scoring_vectors(self, hidden: Any) -> Any:
        if not self.bert_head:
            return hidden
        return self.head_layer_norm(keras.activations.gelu(self.head_dense(hidden), approximate=False))

    def item_bias(self) -> Any:
        return self.output_bias if self.bert_head else None

    def _append_slot(self, inputs: dict[str, Any], item_id: Any) -> dict[str, Any]:
        """Every sequence input extended by one slot on the right, keeping the most recent `max_len` slots.

        The new slot holds `item_id` (an int, or an int `[batch]` tensor) in
        `item_ids` and the OOV id in the interaction features.
        """
        ids = ops.convert_to_tensor(inputs[ITEM_IDS_KEY])
        out = dict(inputs)
        for key, value in inputs.items():
            value = ops.convert_to_tensor(value)
            if len(value.shape) != 2:
                continue
            if key == ITEM_IDS_KEY:
                column = ops.cast(ops.broadcast_to(item_id, ops.shape(ids)[:1]), value.dtype)[:, None]
            else:
                column = ops.full_like(value[:, :1], OOV_ID)
            out[key] = ops.concatenate([value, column], axis=1)[:, -self.backbone.max_len :]
        return out

    def _mask(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Draws the Cloze selection of a batch: `(masked inputs, labels)`, labels 0 at unmasked slots."""
        ids = inputs[ITEM_IDS_KEY]
        shape = ops.shape(ids)
        real = ops.not_equal(ids, PAD_ID)
        selected = ops.logical_and(real, keras.random.uniform(shape, seed=self.seed_generator) < self.mask_prob)
        slots = ops.expand_dims(ops.arange(shape[1]), axis=0)
        if self.ft_ratio > 0.0:
            last_only = keras.random.uniform((shape[0], 1), seed=self.seed_generator) < self.ft_ratio
            last_slot = ops.logical_and(real, ops.equal(slots, shape[1] - 1))
            selected = ops.where(last_only, last_slot, selected)
        # Every window trains on at least one slot: a uniformly drawn real one when none was selected.
        draw = ops.where(real, keras.random.uniform(shape, seed=self.seed_generator), -1.0)
        fallback = ops.equal(slots, ops.expand_dims(ops.cast(ops.argmax(draw, axis=1), "int32"), axis=1))
        none_selected = ops.logical_not(ops.any(selected, axis=1, keepdims=True))
        selected = ops.logical_or(selected, ops.logical_and(ops.logical_and(none_selected, fallback), real))
        labels = ops.where(selected, ids, ops.zeros_like(ids))
        masked = dict(inputs)
        masked[ITEM_IDS_KEY] = ops.where(selected, ops.full_like(ids, self.mask_token_id), ids)
        if self.mask_behaviour_at_masked_slots:
            for key, value in inputs.items():
                if key != ITEM_IDS_KEY and len(ops.shape(value)) == 2:
                    masked[key] = ops.where(selected, ops.full_like(value, OOV_ID), value)
        return masked, labels

    def _training_outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The outputs of a Cloze training call: the masked slots' scores, their `"labels"` and the backbone's outputs.

        The dict has the entries of `NextItemModel`'s training outputs
        (`"inputs"` are the masked inputs) plus the Cloze `"labels"`,
        `[batch, seq_len]`, the original ids at the masked slots and 0
        elsewhere, which replace the labels of the batch in the loss.
        """
        inputs = self._sanitize(inputs, keep_last=False)
        masked, labels = self._mask(inputs)
        backbone_outputs = self.backbone(masked, training=True)
        outputs = {"inputs": masked, "labels": labels, "backbone_outputs": backbone_outputs}
        hidden = backbone_outputs["sequence_output"]
        if self._packs_positions():
            # Masked slots hold real items, so their labels are never 0.
            outputs["slots"] = ops.nonzero(ops.not_equal(ops.reshape(labels, (-1,)), 0))[0]
            hidden = ops.take(ops.reshape(hidden, (-1, ops.shape(hidden)[-1])), outputs["slots"], axis=0)
        outputs.update(self._scored_outputs(hidden))
        return outputs

    def train_step(self, *args: Any) -> Any:
        # The backend's `train_step` takes `(data)` (TensorFlow, torch) or `(state, data)` (JAX).
        *state, data = args
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("Cloze training does not support sample weights; remove them from the training data")
        if y is not None and isinstance(x, dict) and ITEM_IDS_KEY in x:
            # Labels `[batch, seq_len]` or `[batch]` (whose rank a retraced step may not know): the last item of each.
            batch_size = ops.shape(ops.convert_to_tensor(x[ITEM_IDS_KEY]))[0]
            x = self._append_slot(x, ops.reshape(ops.convert_to_tensor(y), (batch_size, -1))[:, -1])
        return super().train_step(*state, (x, y))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("objective")  # Cloze training uses the last label of either layout
        config.update(
            {
                "mask_prob": self.mask_prob,
                "ft_ratio": self.ft_ratio,
                "mask_behaviour_at_masked_slots": self.mask_behaviour_at_masked_slots,
                "bert_head": self.bert_head,
                "seed": self.seed,
            }
        )
        return config
