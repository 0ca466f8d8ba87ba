"""ASIF's fused attention: item, attribute and position paths with decoupled position logits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from tfsidefuse.layers._checks import (
    check_choice,
    check_heads,
    check_positive_int,
    check_rate,
    get_initializer,
    is_positive_int,
    rename_config_keys,
)
from tfsidefuse.layers.attention_core import attend, disallowed_mask, dot_product_logits, split_heads
from tfsidefuse.layers.embedding_fusion import FUSION_MODES, GATE_SCORERS, EmbeddingFusion

#: Which logits the item stream attends with (docs/models.md#asif-readings, A2): ASIF's fused logits, or one of the
#: three readings of the "w/o FA" ablation.
ATTENTION_MODES = ("fused", "decoupled", "item_only", "vanilla")
#: Divisor of the summed item + position logits (docs/models.md#asif-readings, A13): `sqrt(d_h)` (poster) or
#: `sqrt(2 d_h)` (TUPE).
SCORE_SCALES = ("head_dim", "double_head_dim")
#: The gate `phi` of homogeneous information extraction (docs/models.md#asif-readings, A6).
HIE_ACTIVATIONS = ("sigmoid", "relu", "tanh", "identity")


@keras.saving.register_keras_serializable(package="tfsidefuse")
class FusedAttention(keras.layers.Layer):
    """Fused attention of ASIF: three value paths on shared, position-decoupled logits, plus HIE.

    With `X` the item stream (the query input), `A_1..A_m` the attribute
    streams, `P` the position stream, `h` heads of width `d_h = d / h`, `M`
    the additive mask (`0` allowed, `-10000` elsewhere) and all maps per head:

    - `Z = F(X, A_1, .., A_m)` (`EmbeddingFusion`, add / concat / gate; add and
      gate pass a single stream through);
    - `C_XA = (Z W_q1)(Z W_k1)^T`, `C_P = (P W_q2)(P W_k2)^T`;
    - `h_X = softmax((C_XA + C_P) / sqrt(d_h) + M) X W_v1` (item path, eq. 3);
    - `h_A = softmax(C_XA / sqrt(d_h) + M) Z W_v2` (attribute path, eq. 4);
    - `h_P = softmax(C_P / sqrt(d_h) + M) P W_v3` (position path, eq. 5);
    - HIE (eqs. 10-13), with an orthonormal `Q` `[d, r]` given at call time:
      `u_X = h_X Q`, `u_A = h_A Q`, `h_A* = (phi(u_X * u_A) * u_A) Q^T`,
      `h_X <- h_X + h_A*`;
    - output `h_X W^O + b^O`,

    each softmax in float32 with dropout on the probabilities, heads merged
    before HIE. The attribute and position paths exist only where something
    reads them: HIE (`use_hie`) or the next layer's attribute stream
    (`attribute_output`) for `h_A`; the next layer's position stream
    (`position_output`) for `h_P`. With `return_side_outputs=True` the call
    also returns their projected outputs `h_A W^O_A` and `h_P W^O_P`, with
    the stream `Z` they attend over, as a dict with keys `"attribute"`,
    `"attribute_input"`, `"position"` (only those computed).

    Why a second output: the item stream of an ASIF layer has RecBole's
    post-LN residual and feed-forward structure, so this layer is the
    `attention` component of a `TransformerBlock`, whose main output is one
    `[batch, seq_len, d]` tensor; the side streams only get a residual
    update (no feed-forward), which the model applies to the side outputs
    that the block hands back (`TransformerBlock(...,
    return_side_outputs=True)`).

    `mode` selects the item stream's logits (the "w/o FA" readings):

    - `"fused"`: as above (ASIF).
    - `"decoupled"`: attributes leave the item stream, `C_X = (X W_q1)(X
      W_k1)^T` replaces `C_XA` in `h_X`, and the attribute path attends with
      its own logits over the attributes alone: `Z = F(A_1, .., A_m)`,
      `h_A = softmax((Z W_q3)(Z W_k3)^T / sqrt(d_h) + M) Z W_v2`.
    - `"item_only"`: `C_X` replaces `C_XA` in both `h_X` and `h_A` (the
      attribute path keeps the value `Z = F(X, A_1, .., A_m)`).
    - `"vanilla"`: `h_X` attends with `C_X` (plus `C_P` when
      `decoupled_position`) and there is no attribute path, hence no HIE.

    Args:
        hidden_dim: width `d` of every input and of the output.
        num_heads: number of heads `h`; must divide `hidden_dim`.
        num_attribute_inputs: number `m` of attribute streams given at call
            time (0 is allowed except in `"decoupled"` mode).
        mode: `"fused"`, `"decoupled"`, `"item_only"` or `"vanilla"`.
        fusion: `"add"`, `"concat"` or `"gate"`, the fusion function `F`.
        gate_scorer: `"linear"` or `"mlp"`, the scorer of `"gate"` fusion.
        decoupled_position: whether the position stream enters as its own
            logits `C_P` (ASIF); with `False` there is no position input (add
            positions to `X` before the layer) and no position path.
        score_scale: `"head_dim"` divides `C_XA + C_P` by `sqrt(d_h)`
            (poster), `"double_head_dim"` by `sqrt(2 d_h)` (TUPE).
        use_hie: apply HIE; the basis `Q` is then a required call argument.
        hie_activation: `phi`, `"sigmoid"`, `"relu"`, `"tanh"` or
            `"identity"`.
        attribute_output: also compute `h_A W^O_A` for the next layer's
            attribute stream.
        position_output: also compute `h_P W^O_P` for the next layer's
            position stream (needs `decoupled_position`).
        dropout: dropout rate on the attention probabilities.
        kernel_initializer: initializer of every kernel; `None` gives
            `N(0, 0.02)`, as RecBole.
        bias_initializer: initializer of every bias.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        query_input: the item stream `X`, `[batch, seq_len, hidden_dim]`.
        attention_mask: optional bool `[batch, seq_len, seq_len]`, `True`
            where query `i` may attend key `j`; `None` allows everything.
        attribute_inputs: list of `num_attribute_inputs` attribute streams
            `[batch, seq_len, hidden_dim]`, in a fixed order.
        position_inputs: the position stream `P`, `[batch, seq_len,
            hidden_dim]`; required iff `decoupled_position`.
        hie_basis: `Q`, `[hidden_dim, r]` with orthonormal columns (see
            `OrthogonalBasis`); required iff `use_hie`.
        return_attention_scores: also return the item path's attention
            probabilities `[batch, num_heads, seq_len, seq_len]` (before
            dropout).
        return_side_outputs: also return the dict of side outputs (see
            above; empty when no side path is computed).
        training: bool, whether dropout is active.

    Returns:
        The item stream's attention output `[batch, seq_len, hidden_dim]`,
        output projection included; with `return_attention_scores` or
        `return_side_outputs`, a tuple of it, the probabilities (if asked)
        and the side outputs (if asked), in this order.

    Example:

    ```python
    attention = FusedAttention(hidden_dim=8, num_heads=2, num_attribute_inputs=1)
    block = TransformerBlock(8, 2, 32, attention=attention)
    x, category, position = np.random.normal(size=(3, 1, 5, 8))
    q = OrthogonalBasis(8, 2).basis()
    y = block(x, attribute_inputs=[category], position_inputs=position, hie_basis=q)
    ```

    Reference:
        Wang et al., "Aligned Side Information Fusion Method for Sequential
        Recommendation", WWW 2024 (eqs. 1-5, 10-13); Ke et al., "Rethinking
        Positional Encoding in Language Pre-training", ICLR 2021 (untied
        position logits).
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        num_attribute_inputs: int = 1,
        mode: str = "fused",
        fusion: str = "add",
        gate_scorer: str = "linear",
        decoupled_position: bool = True,
        score_scale: str = "head_dim",
        use_hie: bool = True,
        hie_activation: str = "sigmoid",
        attribute_output: bool = False,
        position_output: bool = False,
        dropout: float = 0.0,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("hidden_dim", hidden_dim, allow_bool=False)
        check_heads(num_heads, hidden_dim)
        if not (num_attribute_inputs == 0 or is_positive_int(num_attribute_inputs, allow_bool=False)):
            raise ValueError(
                f"`num_attribute_inputs` must be an int >= 0. Received: num_attribute_inputs={num_attribute_inputs!r}"
            )
        check_choice("mode", mode, ATTENTION_MODES)
        check_choice("fusion", fusion, FUSION_MODES)
        check_choice("gate_scorer", gate_scorer, GATE_SCORERS)
        check_choice("score_scale", score_scale, SCORE_SCALES)
        check_choice("hie_activation", hie_activation, HIE_ACTIVATIONS)
        for name, value in (
            ("decoupled_position", decoupled_position),
            ("use_hie", use_hie),
            ("attribute_output", attribute_output),
            ("position_output", position_output),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
        check_rate("dropout", dropout)
        if mode == "decoupled" and num_attribute_inputs == 0:
            raise ValueError("`mode='decoupled'` attends over the attributes alone and needs num_attribute_inputs >= 1")
        if mode == "vanilla" and (use_hie or attribute_output):
            raise ValueError(
                "`mode='vanilla'` has no attribute path: `use_hie` and `attribute_output` must be False. "
                f"Received: use_hie={use_hie}, attribute_output={attribute_output}"
            )
        if position_output and not decoupled_position:
            raise ValueError("`position_output=True` needs `decoupled_position=True` (the position path reads C_P)")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_attribute_inputs = num_attribute_inputs
        self.mode = mode
        self.fusion = fusion
        self.gate_scorer = gate_scorer
        self.decoupled_position = decoupled_position
        self.score_scale = score_scale
        self.use_hie = use_hie
        self.hie_activation = hie_activation
        self.attribute_output = attribute_output
        self.position_output = position_output
        self.dropout = dropout
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.head_dim = hidden_dim // num_heads

    @property
    def has_attribute_path(self) -> bool:
        """Whether `h_A` is computed (read by HIE or by the next attribute stream)."""
        return self.use_hie or self.attribute_output

    @property
    def _fuses_item_stream(self) -> bool:
        # `Z = F(X, A..)` is needed for the fused logits, and as the attribute value of "item_only".
        return self.mode == "fused" or (self.mode == "item_only" and self.has_attribute_path)

    @property
    def _num_fused(self) -> int:
        """How many streams `F` fuses into `Z` (0: no `Z`)."""
        if self._fuses_item_stream:
            return 1 + self.num_attribute_inputs
        if self.mode == "decoupled" and self.has_attribute_path:
            return self.num_attribute_inputs
        return 0

    def _fuse(self, streams: list) -> Any:
        if hasattr(self, "embedding_fusion"):
            return self.embedding_fusion(streams)
        return streams[0]

    def _dense(self, name: str) -> keras.layers.Dense:
        # Serialized initializers give each kernel a fresh (unseeded) instance.
        return keras.layers.Dense(
            self.hidden_dim,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_input_shape: Any = None) -> None:
        hidden_shape = (None, None, self.hidden_dim)
        names = ["query", "key", "value", "attention_output"]
        if self.decoupled_position:
            names += ["position_query", "position_key"]
        if self.has_attribute_path:
            names += ["attribute_value"]
            if self.mode == "decoupled":
                names += ["attribute_query", "attribute_key"]
        if self.attribute_output:
            names += ["attribute_output"]
        if self.position_output:
            names += ["position_value", "position_output"]
        for name in names:
            dense = self._dense(name)
            dense.build(hidden_shape)
            setattr(self, f"{name}_dense", dense)
        # Add and gate fusion of a single stream are the identity (and the gate would get no gradient).
        num_fused = self._num_fused
        if num_fused > 1 or (num_fused == 1 and self.fusion == "concat"):
            self.embedding_fusion = EmbeddingFusion(
                self.hidden_dim,
                mode=self.fusion,
                gate_scorer=self.gate_scorer,
                kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                bias_initializer=keras.initializers.serialize(self.bias_initializer),
                dtype=self.dtype_policy,
                name="embedding_fusion",
            )
            self.embedding_fusion.build([hidden_shape] * num_fused)
        self.probabilities_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="probabilities_dropout"
        )
        self.built = True

    def _logits(self, query_dense: keras.layers.Dense, key_dense: keras.layers.Dense, source: Any) -> Any:
        """Unscaled per-head logits `(S W_q)(S W_k)^T`, float32 `[batch, heads, seq_len, seq_len]`."""
        query = split_heads(query_dense(source), self.num_heads, self.head_dim)
        key = split_heads(key_dense(source), self.num_heads, self.head_dim)
        return dot_product_logits(query, key)

    def _attend(self, logits: Any, disallowed: Any, value: Any, training: bool | None) -> tuple[Any, Any]:
        """`merge(Dropout(P) split(value))` with `P = softmax(logits + M)`: `([batch, seq_len, hidden_dim], P)`."""
        value = split_heads(value, self.num_heads, self.head_dim)
        return attend(logits, disallowed, value, self.probabilities_dropout, training, self.compute_dtype)

    def _phi(self, x: Any) -> Any:
        if self.hie_activation == "sigmoid":
            return ops.sigmoid(x)
        if self.hie_activation == "relu":
            return ops.relu(x)
        if self.hie_activation == "tanh":
            return ops.tanh(x)
        return x

    def call(
        self,
        query_input: Any,
        attention_mask: Any = None,
        attribute_inputs: Sequence[Any] | None = None,
        position_inputs: Any = None,
        hie_basis: Any = None,
        return_attention_scores: bool = False,
        return_side_outputs: bool = False,
        training: bool | None = None,
    ) -> Any:
        attributes = list(attribute_inputs or [])
        if len(attributes) != self.num_attribute_inputs and self.mode != "vanilla":
            raise ValueError(
                f"Expected {self.num_attribute_inputs} attribute input(s) (`num_attribute_inputs`). "
                f"Received: {len(attributes)}"
            )
        if self.decoupled_position and position_inputs is None:
            raise ValueError("`position_inputs` is required when `decoupled_position=True`")
        if self.use_hie and hie_basis is None:
            raise ValueError("`hie_basis` is required when `use_hie=True`")
        x = query_input
        disallowed = disallowed_mask(attention_mask)
        head_scale = math.sqrt(self.head_dim)

        fused = None
        if self._fuses_item_stream:
            fused = self._fuse([x] + attributes)
        elif self.mode == "decoupled" and self.has_attribute_path:
            fused = self._fuse(attributes)
        item_logits = self._logits(self.query_dense, self.key_dense, fused if self.mode == "fused" else x)
        if self.decoupled_position:
            position_logits = self._logits(self.position_query_dense, self.position_key_dense, position_inputs)
            sum_scale = head_scale if self.score_scale == "head_dim" else math.sqrt(2.0 * self.head_dim)
            item_scores = (item_logits + position_logits) / sum_scale
        else:
            item_scores = item_logits / head_scale
        hidden, probabilities = self._attend(item_scores, disallowed, self.value_dense(x), training)

        side_outputs = {}
        if self.has_attribute_path:
            attribute_logits = item_logits
            if self.mode == "decoupled":
                attribute_logits = self._logits(self.attribute_query_dense, self.attribute_key_dense, fused)
            attribute_hidden, _ = self._attend(
                attribute_logits / head_scale, disallowed, self.attribute_value_dense(fused), training
            )
            if self.use_hie:
                basis = ops.cast(hie_basis, hidden.dtype)
                item_coordinates = ops.matmul(hidden, basis)
                attribute_coordinates = ops.matmul(attribute_hidden, basis)
                gate = self._phi(item_coordinates * attribute_coordinates)
                hidden = hidden + ops.matmul(gate * attribute_coordinates, ops.transpose(basis))
            if self.attribute_output:
                side_outputs["attribute"] = self.attribute_output_dense(attribute_hidden)
                side_outputs["attribute_input"] = fused
        if self.position_output:
            position_hidden, _ = self._attend(
                position_logits / head_scale, disallowed, self.position_value_dense(position_inputs), training
            )
            side_outputs["position"] = self.position_output_dense(position_hidden)
        outputs = self.attention_output_dense(hidden)
        if not (return_attention_scores or return_side_outputs):
            return outputs
        returned = (outputs,)
        if return_attention_scores:
            returned += (probabilities,)
        if return_side_outputs:
            returned += (side_outputs,)
        return returned

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "num_attribute_inputs": self.num_attribute_inputs,
                "mode": self.mode,
                "fusion": self.fusion,
                "gate_scorer": self.gate_scorer,
                "decoupled_position": self.decoupled_position,
                "score_scale": self.score_scale,
                "use_hie": self.use_hie,
                "hie_activation": self.hie_activation,
                "attribute_output": self.attribute_output,
                "position_output": self.position_output,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FusedAttention:
        # Version 0.2.0 saved `score_scale` under the name `score_scaling`.
        return super().from_config(rename_config_keys(config, {"score_scaling": "score_scale"}))
