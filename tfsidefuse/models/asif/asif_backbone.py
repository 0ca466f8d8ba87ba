"""ASIF: fused attention with decoupled position, representation-space alignment and HIE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops

from tfsidefuse.layers._checks import check_choice, check_positive, check_positive_int
from tfsidefuse.layers.embedding_fusion import FUSION_MODES, GATE_SCORERS
from tfsidefuse.layers.fused_attention import ATTENTION_MODES, HIE_ACTIVATIONS, SCORE_SCALINGS, FusedAttention
from tfsidefuse.layers.masks import attention_mask, padding_mask
from tfsidefuse.layers.orthogonal_basis import BASIS_MODES, OrthogonalBasis
from tfsidefuse.models.side_feature_backbone import SideFeatureBackbone

RSA_REDUCTIONS = ("mean_rows", "literal")
RSA_SCOPES = ("sequence", "batch")
RSA_SOURCES = ("embeddings", "layers")
SIDE_STREAM_UPDATES = ("residual_norm", "residual", "replace")
# Logit of the pairs left out of the contrastive softmax; finite so that fully masked rows stay NaN-free.
_EXCLUDED_LOGIT = -1e9
_NORM_EPSILON = 1e-8


def _l2_normalize(x: Any) -> Any:
    # The floor keeps the gradient finite at the zero vectors of padded slots and attribute-less items.
    squared_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x / ops.sqrt(ops.maximum(squared_norm, _NORM_EPSILON**2))


@keras.saving.register_keras_serializable(package="tfsidefuse")
class ASIFBackbone(SideFeatureBackbone):
    """ASIF: item, attribute and position streams fused in the attention logits, aligned and filtered.

    Streams at layer 0 (docs/models.md#asif): the item stream
    `X^0 = Dropout(LN(E_id[s]))` (no position: it has its own logits), the
    attribute streams `A_j^0`, one per side feature (item attributes pooled
    per item, interaction features per slot, all of width `d`), and the
    position stream `P^0 = P[pos]`. Every layer `l` is a post-LN
    `TransformerBlock` on `X` whose attention is a `FusedAttention`:

    `Z = F(X^l, A^l..)`, `C_XA = (Z W_q1)(Z W_k1)^T`, `C_P = (P^l W_q2)(P^l W_k2)^T`,
    `h_X = softmax((C_XA + C_P)/sqrt(d_h) + M) X^l W_v1`,
    `h_A = softmax(C_XA/sqrt(d_h) + M) Z W_v2`, `h_P = softmax(C_P/sqrt(d_h) + M) P^l W_v3`,
    `h_X <- h_X + (phi(h_X Q * h_A Q) * h_A Q) Q^T` (HIE, `Q^T Q = I_r`),
    `X' = LN(X^l + Dropout(h_X W^O))`, `X^{l+1} = LN(X' + Dropout(FFN(X')))`,

    with the causal-plus-padding mask `M`. The side streams are propagated
    (docs/models.md#asif): `A^{l+1} = LN_A(Z + Dropout(h_A W^O_A))` (one fused
    attribute stream from layer 1 on) and `P^{l+1} = LN_P(P^l + Dropout(h_P
    W^O_P))`. Hidden states are scored against the item table (eq. 14).

    Representation-space alignment (RSA, eqs. 6-9) is the auxiliary loss
    `{"alignment": rsa_weight * L_co}`: per sequence, the raw item embeddings
    `x_t = E_id[s_t]` and attribute sums `a_t = sum_j a_{j,t}` (item features)
    of the real slots are L2-normalised, `G = x~ a~^T / tau`, and
    `L_co = sum_t [-log softmax(G_t)_t - log softmax(G^T_t)_t] / (2 sum_b n_b)`
    (a symmetric InfoNCE; pairs of the same item at two slots are no
    negatives). Slots whose item has no attribute take no part. With
    `hie_basis="soft"` an `{"orthogonality": beta ||Q^T Q - I||_F^2}` term
    is added.

    Ablations (poster Table 4), one flag each: `use_rsa=False` (w/o RSA),
    `use_hie=False` (w/o HIE), `update_position_stream=False` (w/o UP: the
    position stream stays `P^0` in every layer, as DIF-SR),
    `fused_attention="decoupled"` (w/o FA).

    Readings of what the poster leaves open (docs/models.md#asif-readings), defaults first:
    A2 `fused_attention` (`"fused"`; "w/o FA" as `"decoupled"`,
    `"item_only"` or `"vanilla"`, see `FusedAttention`); A3
    `update_position_stream` and `untied_position` (`False`: positions are
    added to `X^0` and there are no `C_P`, no position path); A4
    `update_attribute_stream` (`False`: every layer fuses the original
    `A_j^0`); A5 `hie_basis` (`"qr"`, `"soft"`, `"fixed"`, see
    `OrthogonalBasis`) with `hie_orthogonality_weight`; A6
    `hie_activation`; A7 `share_hie_basis`; A8 `rsa_source`
    (`"embeddings"`; `"layers"`: the mean of the loss on every layer's input
    streams, `x = X^l`, `a = sum of A^l`) and `rsa_scope` (`"sequence"`;
    `"batch"`: contrast over the distinct items of the whole batch, memory
    `O((batch * seq_len)^2)`), with `rsa_reduction` and
    `rsa_exclude_repeats`; A9 `tie_output_table`; A10 `num_heads` (HIE acts
    on merged heads); A11 `side_stream_update` (`"residual_norm"`,
    `"residual"`: `A^{l+1} = Z + Dropout(h_A W^O_A)`, `"replace"`:
    `A^{l+1} = h_A W^O_A`, the literal eqs. 4-5); A12 `fusion`; A13
    `score_scaling`. A1 (names) and A14 (a dataset statistic) need no flag.
    `rsa_reduction="literal"` sums the row losses of a sequence and averages
    over sequences, as eq. 9 is written.

    Interaction features (not in the poster, whose side information is
    item attributes) join the attribute streams of the fused logits but not
    RSA, which aligns item-level representations.

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1.
        max_len: number of learned positions (the longest window).
        item_features: item-level features, dicts `{"name", "vocab_size",
            "max_values"}`; their tables are assigned with
            `set_item_feature_tables`.
        interaction_features: interaction-level features, dicts `{"name",
            "vocab_size"}`, read from the inputs under their names.
        hidden_dim: width `d` of every embedding and hidden state.
        num_layers: number of ASIF layers.
        num_heads: attention heads `h`; must divide `hidden_dim`.
        ff_dim: width of the item stream's feed-forward layer.
        dropout: dropout rate on the embeddings and every residual branch.
        attention_dropout: dropout rate on the attention probabilities.
        layer_norm_epsilon: epsilon of every layer normalization.
        fusion: `"add"`, `"concat"` or `"gate"`, the fusion `F` of each layer.
        gate_scorer: `"linear"` or `"mlp"`, the scorer of `"gate"` fusion.
        pooling: `"sum"`, `"mean"` or `"max"` over multi-valued attributes.
        use_rsa: add the alignment loss.
        use_hie: apply homogeneous information extraction.
        update_position_stream: propagate the position stream (UP).
        fused_attention: `"fused"`, `"decoupled"`, `"item_only"` or
            `"vanilla"` (the last drops the attribute path and HIE).
        rsa_weight: `lambda >= 0`.
        rsa_temperature: `tau > 0`.
        rsa_reduction: `"mean_rows"` or `"literal"`.
        rsa_scope: `"sequence"` or `"batch"`.
        rsa_source: `"embeddings"` or `"layers"`.
        rsa_exclude_repeats: leave pairs of the same item out of the
            negatives (and, with `rsa_scope="batch"`, count each distinct item
            once).
        hie_rank: number of bases `r`, `1 <= r <= hidden_dim`; `None` gives
            `max(1, hidden_dim // 4)`.
        hie_basis: `"qr"`, `"soft"` or `"fixed"`.
        hie_orthogonality_weight: `beta >= 0` of the `"soft"` penalty.
        hie_activation: `phi`, `"sigmoid"`, `"relu"`, `"tanh"` or
            `"identity"`.
        share_hie_basis: one `Q` for all layers instead of one per layer.
        untied_position: position in its own logits `C_P` (`False`: added to
            the input).
        update_attribute_stream: propagate the attribute stream.
        side_stream_update: `"residual_norm"`, `"residual"` or `"replace"`.
        score_scaling: `"head_dim"` (`sqrt(d_h)`) or `"double_head_dim"`
            (`sqrt(2 d_h)`) for `C_XA + C_P`.
        tie_output_table: score against `E_id` (`False`: a separate output
            table).
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"`, int `[batch, seq_len]` left-padded
            with 0, and one int `[batch, seq_len]` entry per interaction
            feature, keyed by its name; other keys are ignored.
        training: bool, whether dropout is active.

    Returns:
        Hidden states `[batch, seq_len, hidden_dim]`.

    Example:

    ```python
    backbone = ASIFBackbone(
        num_items=1000,
        item_features=[{"name": "categories", "vocab_size": 60, "max_values": 4}],
    )
    backbone.set_item_feature_tables({"categories": categories_table})  # [1000, 4] ints
    model = NextItemModel(backbone)  # adds rsa_weight * L_co to the loss in training
    ```

    Reference:
        Wang et al., "Aligned Side Information Fusion Method for Sequential
        Recommendation", WWW 2024 (poster).
    """

    def __init__(
        self,
        num_items: int,
        max_len: int = 50,
        item_features: Sequence[Mapping[str, Any]] = (),
        interaction_features: Sequence[Mapping[str, Any]] = (),
        hidden_dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        ff_dim: int = 256,
        dropout: float = 0.5,
        attention_dropout: float = 0.5,
        layer_norm_epsilon: float = 1e-12,
        fusion: str = "add",
        gate_scorer: str = "linear",
        pooling: str = "mean",
        use_rsa: bool = True,
        use_hie: bool = True,
        update_position_stream: bool = True,
        fused_attention: str = "fused",
        rsa_weight: float = 0.1,
        rsa_temperature: float = 0.1,
        rsa_reduction: str = "mean_rows",
        rsa_scope: str = "sequence",
        rsa_source: str = "embeddings",
        rsa_exclude_repeats: bool = True,
        hie_rank: int | None = None,
        hie_basis: str = "qr",
        hie_orthogonality_weight: float = 1.0,
        hie_activation: str = "sigmoid",
        share_hie_basis: bool = False,
        untied_position: bool = True,
        update_attribute_stream: bool = True,
        side_stream_update: str = "residual_norm",
        score_scaling: str = "head_dim",
        tie_output_table: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_items=num_items,
            max_len=max_len,
            item_features=item_features,
            interaction_features=interaction_features,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            ff_dim=ff_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            pooling=pooling,
            **kwargs,
        )
        check_choice("fusion", fusion, FUSION_MODES)
        check_choice("gate_scorer", gate_scorer, GATE_SCORERS)
        check_choice("fused_attention", fused_attention, ATTENTION_MODES)
        check_choice("rsa_reduction", rsa_reduction, RSA_REDUCTIONS)
        check_choice("rsa_scope", rsa_scope, RSA_SCOPES)
        check_choice("rsa_source", rsa_source, RSA_SOURCES)
        check_choice("hie_basis", hie_basis, BASIS_MODES)
        check_choice("hie_activation", hie_activation, HIE_ACTIVATIONS)
        check_choice("side_stream_update", side_stream_update, SIDE_STREAM_UPDATES)
        check_choice("score_scaling", score_scaling, SCORE_SCALINGS)
        flags = {
            "use_rsa": use_rsa,
            "use_hie": use_hie,
            "update_position_stream": update_position_stream,
            "rsa_exclude_repeats": rsa_exclude_repeats,
            "share_hie_basis": share_hie_basis,
            "untied_position": untied_position,
            "update_attribute_stream": update_attribute_stream,
            "tie_output_table": tie_output_table,
        }
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
        for name, value in (("rsa_weight", rsa_weight), ("hie_orthogonality_weight", hie_orthogonality_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
        check_positive("rsa_temperature", rsa_temperature)
        if hie_rank is not None:
            check_positive_int("hie_rank", hie_rank, allow_bool=False)
            if hie_rank > hidden_dim:
                raise ValueError(f"`hie_rank` must be <= hidden_dim={hidden_dim}. Received: hie_rank={hie_rank}")
        if fused_attention == "decoupled" and not self.item_features + self.interaction_features:
            raise ValueError(
                "`fused_attention='decoupled'` attends over the side features alone and needs at least one. "
                "Received: item_features=[], interaction_features=[]"
            )
        self.fusion = fusion
        self.gate_scorer = gate_scorer
        self.use_rsa = use_rsa
        self.use_hie = use_hie
        self.update_position_stream = update_position_stream
        self.fused_attention = fused_attention
        self.rsa_weight = rsa_weight
        self.rsa_temperature = rsa_temperature
        self.rsa_reduction = rsa_reduction
        self.rsa_scope = rsa_scope
        self.rsa_source = rsa_source
        self.rsa_exclude_repeats = rsa_exclude_repeats
        self.hie_rank = hie_rank
        self.hie_basis = hie_basis
        self.hie_orthogonality_weight = hie_orthogonality_weight
        self.hie_activation = hie_activation
        self.share_hie_basis = share_hie_basis
        self.untied_position = untied_position
        self.update_attribute_stream = update_attribute_stream
        self.side_stream_update = side_stream_update
        self.score_scaling = score_scaling
        self.tie_output_table = tie_output_table

    @property
    def effective_hie_rank(self) -> int:
        """The number of HIE bases `r`."""
        return self.hie_rank if self.hie_rank is not None else max(1, self.hidden_dim // 4)

    @property
    def _applies_hie(self) -> bool:
        return self.use_hie and self.fused_attention != "vanilla"

    @property
    def _updates_attributes(self) -> bool:
        return self.update_attribute_stream and self.fused_attention != "vanilla"

    @property
    def _updates_positions(self) -> bool:
        return self.update_position_stream and self.untied_position

    def _num_attribute_inputs(self, layer: int) -> int:
        if layer > 0 and self._updates_attributes:
            return 1  # the propagated (fused) attribute stream
        return len(self.item_features) + len(self.interaction_features)

    def build_item_tables(self) -> None:
        super().build_item_tables()
        if not self.tie_output_table:
            self.output_embedding = self.make_item_embedding("output_embedding")

    def build_embeddings(self) -> None:
        super().build_embeddings()
        self.stream_dropout = self.make_dropout("stream_dropout")

    def block_attention(self, index: int) -> FusedAttention:
        # The last layer's side streams would have no reader.
        has_next = index < self.num_layers - 1
        return FusedAttention(
            self.hidden_dim,
            self.num_heads,
            num_attribute_inputs=self._num_attribute_inputs(index),
            mode=self.fused_attention,
            fusion=self.fusion,
            gate_scorer=self.gate_scorer,
            decoupled_position=self.untied_position,
            score_scaling=self.score_scaling,
            use_hie=self._applies_hie,
            hie_activation=self.hie_activation,
            attribute_output=self._updates_attributes and has_next,
            position_output=self._updates_positions and has_next,
            dropout=self.attention_dropout,
            dtype=self.dtype_policy,
            name="fused_attention",
        )

    def build(self, inputs_shape: Any = None) -> None:
        self.build_embeddings()
        self.hie_bases = []
        if self._applies_hie:
            for i in range(1 if self.share_hie_basis else self.num_layers):
                basis = OrthogonalBasis(
                    self.hidden_dim,
                    self.effective_hie_rank,
                    mode=self.hie_basis,
                    dtype=self.dtype_policy,
                    name=f"hie_basis_{i}",
                )
                basis.build()
                self.hie_bases.append(basis)

        # Each block is followed by the norms of the side streams it updates (the order of the weights).
        self.transformer_layers = []
        self.attribute_stream_norms = []
        self.position_stream_norms = []
        for i in range(self.num_layers):
            # The attention is built by the block, so that its weights are named under the block.
            self.transformer_layers.append(
                self.make_transformer_block(f"transformer_layer_{i}", self.block_attention(i))
            )
            if i < self.num_layers - 1 and self.side_stream_update == "residual_norm":
                for updated, norms, stream in (
                    (self._updates_attributes, self.attribute_stream_norms, "attribute"),
                    (self._updates_positions, self.position_stream_norms, "position"),
                ):
                    if updated:
                        norms.append(self.make_layer_norm(f"{stream}_stream_norm_{i}"))
        self.built = True

    def item_table(self) -> Any:
        if self.tie_output_table:
            return self.item_embedding.embeddings
        return self.output_embedding.embeddings

    def _update_stream(self, residual: Any, update: Any, norms: list, layer: int, training: bool | None) -> Any:
        if self.side_stream_update == "replace":
            return update
        updated = residual + self.stream_dropout(update, training=training)
        if self.side_stream_update == "residual":
            return updated
        return norms[layer](updated)

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        item_ids = inputs["item_ids"]
        mask = padding_mask(item_ids)
        attributes = self.side_embedding_list(inputs)
        position = self.position_embedding(mask)
        x = self.item_embedding(item_ids)
        if not self.untied_position:
            x = x + position
        x = self.normalize_embeddings(x, training)
        causal_mask = attention_mask(mask, causal=True)
        layer_streams = []
        for i, block in enumerate(self.transformer_layers):
            layer_streams.append((x, attributes))
            kwargs = {"attribute_inputs": attributes}
            if self.untied_position:
                kwargs["position_input"] = position
            if self._applies_hie:
                kwargs["hie_basis"] = self.hie_bases[0 if self.share_hie_basis else i].basis()
            x = block(x, attention_mask=causal_mask, training=training, **kwargs)
            side_outputs = block.self_attention.latest_side_outputs
            if "attribute" in side_outputs:
                attributes = [
                    self._update_stream(
                        side_outputs["attribute_input"],
                        side_outputs["attribute"],
                        self.attribute_stream_norms,
                        i,
                        training,
                    )
                ]
            if "position" in side_outputs:
                position = self._update_stream(
                    position, side_outputs["position"], self.position_stream_norms, i, training
                )
        if self.use_rsa and self.rsa_source == "layers":
            # Read back by `auxiliary_loss` in the same traced step.
            object.__setattr__(self, "_layer_streams", layer_streams)
        return x

    def alignment_loss(self, item_ids: Any, items: Any, attributes: Any) -> Any:
        """The RSA loss `L_co` (unweighted) of one batch, float32 scalar.

        Args:
            item_ids: int `[batch, seq_len]`, `0` = padding.
            items: the item representations `x`, `[batch, seq_len, d]`.
            attributes: the attribute representations `a`, `[batch, seq_len, d]`.

        Returns:
            `L_co`; `0` when no slot has both a real item and a non-zero `a`.
        """
        items = ops.cast(items, "float32")
        attributes = ops.cast(attributes, "float32")
        item_ids = ops.cast(item_ids, "int32")
        batch_size = ops.shape(item_ids)[0]
        valid = ops.logical_and(ops.not_equal(item_ids, 0), ops.sum(ops.square(attributes), axis=-1) > 0)
        if self.rsa_scope == "batch":
            items = ops.reshape(items, (1, -1, self.hidden_dim))
            attributes = ops.reshape(attributes, (1, -1, self.hidden_dim))
            item_ids = ops.reshape(item_ids, (1, -1))
            valid = ops.reshape(valid, (1, -1))
        items = _l2_normalize(items)
        attributes = _l2_normalize(attributes)
        logits = ops.matmul(items, ops.transpose(attributes, (0, 2, 1))) / self.rsa_temperature

        length = ops.shape(item_ids)[1]
        same_slot = ops.expand_dims(ops.eye(length, dtype="bool"), axis=0)
        both_valid = ops.logical_and(ops.expand_dims(valid, 2), ops.expand_dims(valid, 1))
        rows = valid
        allowed = both_valid
        if self.rsa_exclude_repeats:
            other_item = ops.not_equal(ops.expand_dims(item_ids, 2), ops.expand_dims(item_ids, 1))
            if self.rsa_scope == "batch":
                # A slot stands for its item if no earlier real slot holds the same item: each item counts once.
                earlier = ops.expand_dims(ops.logical_not(ops.triu(ops.ones((length, length), dtype="bool"))), 0)
                same_item_before = ops.logical_and(ops.logical_and(both_valid, earlier), ops.logical_not(other_item))
                repeated = ops.any(same_item_before, axis=2)
                rows = ops.logical_and(valid, ops.logical_not(repeated))
                other_item = ops.logical_and(other_item, ops.expand_dims(rows, 1))
            allowed = ops.logical_and(both_valid, ops.logical_or(same_slot, other_item))

        def diagonal_log_softmax(scores: Any) -> Any:
            scores = ops.where(allowed, scores, _EXCLUDED_LOGIT)
            return ops.diagonal(ops.log_softmax(scores, axis=-1), axis1=1, axis2=2)

        row_losses = -(diagonal_log_softmax(logits) + diagonal_log_softmax(ops.transpose(logits, (0, 2, 1))))
        rows = ops.cast(rows, "float32")
        total = ops.sum(row_losses * rows)
        if self.rsa_reduction == "mean_rows":
            return total / (2.0 * ops.maximum(ops.sum(rows), 1.0))
        return total / (2.0 * ops.cast(batch_size, "float32"))

    def auxiliary_loss(self, inputs: dict[str, Any], labels: Any, hidden: Any) -> dict[str, Any]:
        losses = {}
        item_ids = inputs["item_ids"]
        if self.use_rsa:
            if self.rsa_source == "embeddings":
                pairs = []
                if self.item_features:
                    side = self.side_information_embedding(inputs)
                    item_side = [side[feature["name"]] for feature in self.item_features]
                    pairs = [(self.item_embedding(item_ids), sum(item_side[1:], item_side[0]))]
            else:
                pairs = [
                    (items, sum(attributes[1:], attributes[0]))
                    for items, attributes in self._layer_streams
                    if attributes
                ]
            if pairs:
                loss = sum(self.alignment_loss(item_ids, items, attributes) for items, attributes in pairs)
                losses["alignment"] = self.rsa_weight * loss / len(pairs)
        if self._applies_hie and self.hie_basis == "soft":
            penalty = sum(basis.orthogonality_penalty() for basis in self.hie_bases)
            losses["orthogonality"] = self.hie_orthogonality_weight * penalty
        return losses

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "fusion": self.fusion,
                "gate_scorer": self.gate_scorer,
                "use_rsa": self.use_rsa,
                "use_hie": self.use_hie,
                "update_position_stream": self.update_position_stream,
                "fused_attention": self.fused_attention,
                "rsa_weight": self.rsa_weight,
                "rsa_temperature": self.rsa_temperature,
                "rsa_reduction": self.rsa_reduction,
                "rsa_scope": self.rsa_scope,
                "rsa_source": self.rsa_source,
                "rsa_exclude_repeats": self.rsa_exclude_repeats,
                "hie_rank": self.hie_rank,
                "hie_basis": self.hie_basis,
                "hie_orthogonality_weight": self.hie_orthogonality_weight,
                "hie_activation": self.hie_activation,
                "share_hie_basis": self.share_hie_basis,
                "untied_position": self.untied_position,
                "update_attribute_stream": self.update_attribute_stream,
                "side_stream_update": self.side_stream_update,
                "score_scaling": self.score_scaling,
                "tie_output_table": self.tie_output_table,
            }
        )
        return config
