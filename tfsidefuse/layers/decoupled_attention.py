"""DIF-SR's decoupled multi-head attention: one score map per side-information source."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from tfsidefuse.layers._checks import check_choice, check_heads, check_positive_int, check_rate, get_initializer
from tfsidefuse.layers.attention_core import attend, disallowed_mask, dot_product_logits, split_heads
from tfsidefuse.layers.embedding_fusion import EmbeddingFusion

SCORE_FUSIONS = ("sum", "concat", "gate")
# What the fused scores are divided by the square root of: the item head width (DIF-SR) or the model width.
SCORE_SCALES = ("head_dim", "hidden_dim")


@keras.saving.register_keras_serializable(package="tfsidefuse")
class DecoupledAttention(keras.layers.Layer):
    """Multi-head attention with decoupled score maps for item, position and attributes (DIF-SR).

    With `h` heads, the item stream `R` gives `Q_id, K_id, V_id` (head width
    `d_h = hidden_dim / h`), the position embeddings `P` give `Q_p, K_p`
    (width `d_h`), and every attribute embedding `A_j` (width `d_j`) gives
    `Q_j, K_j` with its own smaller head width `floor(d_j / h)`. Each source
    has its own raw score map, `S_id = Q_id K_id^T`, `S_pos = Q_p K_p^T`,
    `S_j = Q_j K_j^T` (`[batch, h, seq_len, seq_len]`), and

    `S = F(S_1, .., S_p, S_id, S_pos) / sqrt(d_h) + M`,
    `output = merge(Dropout(softmax(S)) V_id) W^O + b^O`:

    values come from the items only, every source is scaled by the item head
    width after the fusion `F`, and the mask `M` (0 allowed, -10000 not) is
    added after it. `F` is

    - `"sum"`: `S_1 + .. + S_p + S_id + S_pos`;
    - `"concat"`: per query row, `[S_1 || .. || S_p || S_id || S_pos] W^f + b^f`
      over the key axis, `W^f` of shape `[(p + 2) max_len, max_len]`;
    - `"gate"`: `sum_k alpha_k S_k` with `alpha = softmax_k(e_k)` and
      `e_k = w_2^T ReLU(W_1 S_k + b_1)` read from the whole key row,
      `W_1` of shape `[max_len, max_len]` (RecBole's vanilla attention, see
      `EmbeddingFusion`; its output bias `b_2` cancels in the softmax and is
      left out);

    with weights shared by heads, queries and batch, as the official code.
    The official parameters (docs/models.md#difsr-parameters) map to the sublayers
    `query`, `key`, `value`, `position_query` (`query_p`), `position_key`
    (`key_p`), `attribute_{j}_query` / `attribute_{j}_key`
    (`query_layers.j` / `key_layers.j`), `score_fusion/projection`
    (concat `fusion_layer`), `score_fusion/gate_hidden_dense` and
    `score_fusion/gate_output_dense` (gate `fusion_layer.projection.0` and
    `.2`) and `attention_output` (`dense`), kernels transposed.

    Concat and gate mix whole key rows, so two choices keep them sound for
    left-padded windows and for training at every position:

    - the key axis they read is indexed by key *position*, counted from the
      oldest real key (the slot index of RecBole's right-padded windows), so
      the learned weights mean the same whatever the amount of padding;
    - disallowed entries (future and padded keys) are set to zero *before*
      the fusion, so a query's fused scores never depend on keys it may not
      attend. The official code fuses unmasked rows, which leaks the future
      when the loss is taken at every position.

    `"sum"` is unaffected by both. Keys are real where at least one query may
    attend them; a window longer than `max_len` leaves the keys beyond
    position `max_len - 1` out of the concat and gate rows.

    Two options let the layer serve models that bring side information in
    elsewhere too: `query_key_input` gives `Q_id, K_id` from another tensor
    than the values (a fusion of the item stream with side features, as
    NOVA), and `use_position=False` drops the position map (`S_pos` and its
    projections), for a model that adds the position elsewhere.

    Args:
        hidden_dim: width `d` of the item stream, the position embeddings and
            the output.
        num_heads: number of heads `h`; must divide `hidden_dim`.
        attribute_dims: widths `d_j` of the attribute (or other side feature)
            embeddings, one per source, in call order; each must be at least
            `num_heads`.
        fusion: `"sum"`, `"concat"` or `"gate"`.
        max_len: length of the key rows that concat and gate read (the
            longest window); required for them, unused by `"sum"`.
        dropout: dropout rate on the attention probabilities.
        use_position: whether the position has its own score map (then
            `position_inputs` is required at every call) or not (then it must
            be left out).
        kernel_initializer: initializer of every kernel; `None` gives
            `N(0, 0.02)`, as RecBole.
        bias_initializer: initializer of every bias.
        score_scale: `"head_dim"` divides the fused scores by `sqrt(d_h)`
            (DIF-SR); `"hidden_dim"` by `sqrt(d)` (COMIF's eq. 6 as printed).
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: the item stream `R`, `[batch, seq_len, hidden_dim]`, source
            of the values (and of `Q_id, K_id` unless `query_key_input`).
        attention_mask: optional bool `[batch, seq_len, seq_len]`, `True`
            where query `i` may attend key `j`. `None` allows everything.
        attribute_inputs: the attribute embeddings `A_j`, a list of
            `[batch, seq_len, d_j]` tensors in the order of `attribute_dims`
            (a single tensor when there is one attribute).
        position_inputs: the position embeddings `P`, `[batch, seq_len,
            hidden_dim]`; only with `use_position=True`. With
            `position_ids`, the position table `[num_positions, hidden_dim]`
            instead.
        position_ids: optional int `[batch, seq_len]`, the row of the
            position table `position_inputs` at each slot. `S_pos` is then
            computed once per table (`[heads, num_positions,
            num_positions]`) and gathered for each pair of slots: the same
            values as from the gathered embeddings, without projecting a
            position vector per slot.
        query_key_input: optional source of `Q_id, K_id`, `[batch, seq_len,
            hidden_dim]`; defaults to `inputs`.
        last_query_only: bool, compute the output of the last slot only
            (`[batch, 1, hidden_dim]`): its query attends every key as in
            the full call, with the same values (what a next-item prediction
            reads from the last layer).
        return_attention_scores: also return the attention probabilities
            `[batch, num_heads, seq_len, seq_len]` (before dropout).
        training: bool, whether dropout is active.

    Returns:
        `[batch, seq_len, hidden_dim]`, or `(output, probabilities)` when
        `return_attention_scores=True`.

    Example:

    ```python
    attention = DecoupledAttention(hidden_dim=8, num_heads=2, attribute_dims=[4], fusion="gate", max_len=5)
    ids = np.array([[0, 0, 3, 4, 5]])
    items, positions = np.random.normal(size=(2, 1, 5, 8))
    categories = np.random.normal(size=(1, 5, 4))
    outputs = attention(
        items,
        attention_mask=masks.attention_mask(masks.padding_mask(ids)),
        attribute_inputs=[categories],
        position_inputs=positions,
    )  # [1, 5, 8]
    block = TransformerBlock(hidden_dim=8, num_heads=2, ff_dim=16, attention=attention)
    ```

    Reference:
        Xie et al., "Decoupled Side Information Fusion for Sequential
        Recommendation", SIGIR 2022.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        attribute_dims: Sequence[int] = (),
        fusion: str = "sum",
        max_len: int | None = None,
        dropout: float = 0.0,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        use_position: bool = True,
        score_scale: str = "head_dim",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("hidden_dim", hidden_dim, allow_bool=False)
        check_heads(num_heads, hidden_dim)
        if isinstance(attribute_dims, (str, bytes)) or not isinstance(attribute_dims, Sequence):
            raise ValueError(f"`attribute_dims` must be a list of ints. Received: attribute_dims={attribute_dims!r}")
        for width in attribute_dims:
            if not isinstance(width, int) or isinstance(width, bool) or width < num_heads:
                raise ValueError(
                    f"Every entry of `attribute_dims` must be an int >= num_heads={num_heads} (the attribute head "
                    f"width is floor(d_j / num_heads)). Received: attribute_dims={list(attribute_dims)!r}"
                )
        check_choice("fusion", fusion, SCORE_FUSIONS)
        if fusion != "sum" or max_len is not None:
            check_positive_int("max_len", max_len, allow_bool=False)
        check_rate("dropout", dropout)
        if not isinstance(use_position, bool):
            raise ValueError(f"`use_position` must be a bool. Received: use_position={use_position!r}")
        check_choice("score_scale", score_scale, SCORE_SCALES)
        self.score_scale = score_scale
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.attribute_dims = list(attribute_dims)
        self.fusion = fusion
        self.max_len = max_len
        self.dropout = dropout
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.use_position = use_position
        self.head_dim = hidden_dim // num_heads
        self.attribute_head_dims = [width // num_heads for width in self.attribute_dims]

    def _dense(self, units: int, name: str) -> keras.layers.Dense:
        # Serialized initializers give each kernel a fresh (unseeded) instance.
        return keras.layers.Dense(
            units,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, inputs_shape: Any = None) -> None:
        hidden_shape = (None, None, self.hidden_dim)
        names = ("query", "key", "value", "attention_output")
        for name in names + (("position_query", "position_key") if self.use_position else ()):
            dense = self._dense(self.hidden_dim, name)
            dense.build(hidden_shape)
            setattr(self, f"{name}_dense", dense)
        self.attribute_query_denses = []
        self.attribute_key_denses = []
        for j, (width, head_width) in enumerate(zip(self.attribute_dims, self.attribute_head_dims)):
            for kind, denses in (("query", self.attribute_query_denses), ("key", self.attribute_key_denses)):
                dense = self._dense(self.num_heads * head_width, f"attribute_{j}_{kind}")
                dense.build((None, None, width))
                denses.append(dense)
        if self.fusion != "sum":
            # The official concat/gate layers: key rows of length max_len, one per source.
            self.score_fusion = EmbeddingFusion(
                self.max_len,
                mode=self.fusion,
                gate_scorer="mlp",
                kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                bias_initializer=keras.initializers.serialize(self.bias_initializer),
                dtype=self.dtype_policy,
                name="score_fusion",
            )
            num_sources = len(self.attribute_dims) + 1 + int(self.use_position)
            self.score_fusion.build([(None, None, None, self.max_len)] * num_sources)
        self.probabilities_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="probabilities_dropout"
        )
        self.built = True

    def _scores(self, query_dense: Any, key_dense: Any, x: Any, head_width: int, last_query_only: bool = False) -> Any:
        """Unscaled `Q K^T` of one source, `[batch, heads, queries, seq_len]` (one query with `last_query_only`)."""
        queries = x[:, -1:, :] if last_query_only else x
        query = split_heads(query_dense(queries), self.num_heads, head_width)
        key = split_heads(key_dense(x), self.num_heads, head_width)
        # In the compute dtype: the sources are fused before the cast to float32.
        return dot_product_logits(query, key, dtype=None)

    def _table_scores(self, table: Any, ids: Any, last_query_only: bool = False) -> Any:
        """`S_pos` from the position table and each slot's row: `[batch, heads, queries, seq_len]`."""
        if len(table.shape) != 2 or len(ids.shape) != 2:
            raise ValueError(
                "With `position_ids` [batch, seq_len], `position_inputs` must be the position table "
                f"[num_positions, hidden_dim]. Received shapes: position_inputs={tuple(table.shape)}, "
                f"position_ids={tuple(ids.shape)}"
            )
        table = ops.expand_dims(table, axis=0)
        scores = self._scores(self.position_query_dense, self.position_key_dense, table, self.head_dim)[0]
        num_positions = ops.shape(table)[1]
        ids = ops.cast(ids, "int32")
        query_ids = ids[:, -1:] if last_query_only else ids
        pairs = ops.expand_dims(query_ids, axis=2) * num_positions + ops.expand_dims(ids, axis=1)  # [batch, q, seq_len]
        gathered = ops.take(ops.reshape(scores, (self.num_heads, -1)), pairs, axis=1)  # [heads, batch, q, seq_len]
        return ops.transpose(gathered, (1, 0, 2, 3))

    def _fuse_rows(self, sources: list[Any], allowed: Any, key_valid: Any) -> Any:
        """Concat or gate fusion over position-indexed key rows, mapped back to key slots.

        `allowed` holds the mask rows of the queries in `sources`; `key_valid` `[batch, seq_len]` the real keys.
        """
        positions = ops.cumsum(ops.cast(key_valid, "int32"), axis=1) - 1
        # A window of seq_len < max_len keys fills only the first seq_len entries of each max_len row: the
        # fusion reads and writes those, with the matching slices of its weights (the same values, cheaper).
        length = sources[0].shape[-1]
        if length is None:
            width = ops.minimum(ops.shape(sources[0])[-1], self.max_len)
        elif isinstance(length, int):
            width = min(length, self.max_len)
        else:
            # A symbolic dimension (JAX traces a symbolic call with shape polymorphism): the full rows, which
            # give the same values.
            width = self.max_len
        # slot_to_position[b, j, q] = 1 iff key j is real and at position q: an exact re-indexing.
        slot_to_position = ops.one_hot(positions, width, dtype=self.compute_dtype)
        slot_to_position = slot_to_position * ops.cast(ops.expand_dims(key_valid, -1), slot_to_position.dtype)
        zeros = ops.zeros_like(sources[0])
        allowed = ops.expand_dims(allowed, axis=1)
        rows = [ops.einsum("bhij,bjq->bhiq", ops.where(allowed, source, zeros), slot_to_position) for source in sources]
        fused = self.score_fusion(rows, width=width)  # [batch, heads, queries, width]
        return ops.einsum("bhiq,bjq->bhij", fused, slot_to_position)

    def call(
        self,
        inputs: Any,
        attention_mask: Any = None,
        attribute_inputs: Any = None,
        position_inputs: Any = None,
        return_attention_scores: bool = False,
        training: bool | None = None,
        query_key_input: Any = None,
        position_ids: Any = None,
        last_query_only: bool = False,
    ) -> Any:
        if attribute_inputs is None:
            attribute_inputs = []
        elif not isinstance(attribute_inputs, (list, tuple)):
            attribute_inputs = [attribute_inputs]
        if len(attribute_inputs) != len(self.attribute_dims):
            raise ValueError(
                f"`attribute_inputs` must hold one tensor per entry of attribute_dims={self.attribute_dims}. "
                f"Received: {len(attribute_inputs)} tensor(s)"
            )
        if self.use_position and position_inputs is None:
            raise ValueError("`position_inputs` is required: position enters only through its own score map.")
        if not self.use_position and position_inputs is not None:
            raise ValueError("`position_inputs` must be left out when use_position=False (no position score map).")
        if query_key_input is None:
            query_key_input = inputs
        batch_size, length = ops.shape(inputs)[0], ops.shape(inputs)[1]
        if attention_mask is None:
            allowed = ops.ones((batch_size, length, length), dtype="bool")
        else:
            allowed = ops.cast(attention_mask, "bool")
        key_valid = ops.any(allowed, axis=1)  # [batch, seq_len]: keys some query may attend
        if last_query_only:
            allowed = allowed[:, -1:, :]

        # Official source order: attributes, item, position.
        sources = [
            self._scores(query_dense, key_dense, attributes, head_width, last_query_only)
            for query_dense, key_dense, attributes, head_width in zip(
                self.attribute_query_denses, self.attribute_key_denses, attribute_inputs, self.attribute_head_dims
            )
        ]
        sources.append(self._scores(self.query_dense, self.key_dense, query_key_input, self.head_dim, last_query_only))
        if self.use_position and position_ids is not None:
            sources.append(self._table_scores(position_inputs, position_ids, last_query_only))
        elif self.use_position:
            sources.append(
                self._scores(
                    self.position_query_dense, self.position_key_dense, position_inputs, self.head_dim, last_query_only
                )
            )
        if self.fusion == "sum":
            scores = sources[0]
            for source in sources[1:]:
                scores = scores + source
        else:
            scores = self._fuse_rows(sources, allowed, key_valid)

        # Softmax in float32: float16 exponentials of large scores overflow.
        scale = self.head_dim if self.score_scale == "head_dim" else self.hidden_dim
        scores = ops.cast(scores, "float32") / math.sqrt(scale)
        value = split_heads(self.value_dense(inputs), self.num_heads, self.head_dim)
        context, probabilities = attend(
            scores, disallowed_mask(allowed), value, self.probabilities_dropout, training, self.compute_dtype
        )
        outputs = self.attention_output_dense(context)
        if return_attention_scores:
            return outputs, probabilities
        return outputs

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "attribute_dims": list(self.attribute_dims),
                "fusion": self.fusion,
                "max_len": self.max_len,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "use_position": self.use_position,
                "score_scale": self.score_scale,
            }
        )
        return config
