"""ASIF: fused attention with decoupled position and HIE; its alignment is `ASIFAlignmentHead`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from tfsidefuse.layers._checks import check_choice, check_positive_int, rename_config_keys
from tfsidefuse.layers.embedding_fusion import FUSION_MODES, GATE_SCORERS
from tfsidefuse.layers.fused_attention import ATTENTION_MODES, HIE_ACTIVATIONS, SCORE_SCALES, FusedAttention
from tfsidefuse.layers.masks import attention_mask, padding_mask
from tfsidefuse.layers.orthogonal_basis import BASIS_MODES, OrthogonalBasis
from tfsidefuse.models.side_feature_backbone import SideFeatureBackbone

SIDE_STREAM_UPDATES = ("residual_norm", "residual", "replace")


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

    Representation-space alignment (RSA, eqs. 6-9) is an auxiliary objective
    of the task, `ASIFAlignmentHead` (with the weight of the soft HIE basis
    penalty); the backbone returns the representations it aligns (see
    Returns) and, with `hie_basis="soft"`, the penalty `||Q^T Q - I||_F^2`.

    Ablations (poster Table 4), one flag each: `use_rsa=False` of the head
    (w/o RSA), `use_hie=False` (w/o HIE), `update_position_stream=False` (w/o UP: the
    position stream stays `P^0` in every layer, as DIF-SR),
    `fused_attention="decoupled"` (w/o FA).

    Readings of what the poster leaves open (docs/models.md#asif-readings), defaults first:
    A2 `fused_attention` (`"fused"`; "w/o FA" as `"decoupled"`,
    `"item_only"` or `"vanilla"`, see `FusedAttention`); A3
    `update_position_stream` and `untied_position` (`False`: positions are
    added to `X^0` and there are no `C_P`, no position path); A4
    `update_attribute_stream` (`False`: every layer fuses the original
    `A_j^0`); A5 `hie_basis` (`"qr"`, `"soft"`, `"fixed"`, see
    `OrthogonalBasis`) with the head's `hie_orthogonality_weight`; A6
    `hie_activation`; A7 `share_hie_basis`; A8 the head's `rsa_source`,
    `rsa_scope`, `rsa_reduction` and `rsa_exclude_repeats`; A9
    `tie_output_table`; A10 `num_heads` (HIE acts
    on merged heads); A11 `side_stream_update` (`"residual_norm"`,
    `"residual"`: `A^{l+1} = Z + Dropout(h_A W^O_A)`, `"replace"`:
    `A^{l+1} = h_A W^O_A`, the literal eqs. 4-5); A12 `fusion`; A13
    `score_scale`. A1 (names) and A14 (a dataset statistic) need no flag.

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
        use_hie: apply homogeneous information extraction.
        update_position_stream: propagate the position stream (UP).
        fused_attention: `"fused"`, `"decoupled"`, `"item_only"` or
            `"vanilla"` (the last drops the attribute path and HIE).
        hie_rank: number of bases `r`, `1 <= r <= hidden_dim`; `None` gives
            `max(1, hidden_dim // 4)`.
        hie_basis: `"qr"`, `"soft"` or `"fixed"`.
        hie_activation: `phi`, `"sigmoid"`, `"relu"`, `"tanh"` or
            `"identity"`.
        share_hie_basis: one `Q` for all layers instead of one per layer.
        untied_position: position in its own logits `C_P` (`False`: added to
            the input).
        update_attribute_stream: propagate the attribute stream.
        side_stream_update: `"residual_norm"`, `"residual"` or `"replace"`.
        score_scale: `"head_dim"` (`sqrt(d_h)`) or `"double_head_dim"`
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
        A dict with the hidden states `"sequence_output"`, `[batch, seq_len,
        hidden_dim]`, and what the alignment reads, each `[batch, seq_len,
        hidden_dim]`: `"item_embeddings"` (`E_id[s]`), `"attribute_embeddings"`
        (the sum of the item-feature embeddings; only with item features),
        `"item_streams"` and `"attribute_streams"` (per layer that has
        attribute streams, its input `X^l` and the sum of its `A^l`), and,
        with `hie_basis="soft"`, the scalar `"orthogonality_penalty"`
        `sum ||Q^T Q - I||_F^2`.

    Example:

    ```python
    backbone = ASIFBackbone(
        num_items=1000,
        item_features=[{"name": "categories", "vocab_size": 60, "max_values": 4}],
    )
    backbone.set_item_feature_tables({"categories": categories_table})  # [1000, 4] ints
    model = NextItemModel(backbone, heads=[ASIFAlignmentHead(rsa_weight=0.1)])  # adds 0.1 * L_co in training
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
        use_hie: bool = True,
        update_position_stream: bool = True,
        fused_attention: str = "fused",
        hie_rank: int | None = None,
        hie_basis: str = "qr",
        hie_activation: str = "sigmoid",
        share_hie_basis: bool = False,
        untied_position: bool = True,
        update_attribute_stream: bool = True,
        side_stream_update: str = "residual_norm",
        score_scale: str = "head_dim",
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
        check_choice("hie_basis", hie_basis, BASIS_MODES)
        check_choice("hie_activation", hie_activation, HIE_ACTIVATIONS)
        check_choice("side_stream_update", side_stream_update, SIDE_STREAM_UPDATES)
        check_choice("score_scale", score_scale, SCORE_SCALES)
        flags = {
            "use_hie": use_hie,
            "update_position_stream": update_position_stream,
            "share_hie_basis": share_hie_basis,
            "untied_position": untied_position,
            "update_attribute_stream": update_attribute_stream,
            "tie_output_table": tie_output_table,
        }
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
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
        self.use_hie = use_hie
        self.update_position_stream = update_position_stream
        self.fused_attention = fused_attention
        self.hie_rank = hie_rank
        self.hie_basis = hie_basis
        self.hie_activation = hie_activation
        self.share_hie_basis = share_hie_basis
        self.untied_position = untied_position
        self.update_attribute_stream = update_attribute_stream
        self.side_stream_update = side_stream_update
        self.score_scale = score_scale
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
            score_scale=self.score_scale,
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

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> dict[str, Any]:
        item_ids = inputs["item_ids"]
        mask = padding_mask(item_ids)
        attributes = self.side_embedding_list(inputs)
        position = self.position_embedding(mask)
        items = self.item_embedding(item_ids)
        outputs = {"item_embeddings": items}
        if self.item_features:
            # The item features come first in `attributes`; interaction features take no part in the alignment.
            item_side = attributes[: len(self.item_features)]
            outputs["attribute_embeddings"] = sum(item_side[1:], item_side[0])
        x = items if self.untied_position else items + position
        x = self.normalize_embeddings(x, training)
        causal_mask = attention_mask(mask, causal=True)
        item_streams, attribute_streams = [], []
        for i, block in enumerate(self.transformer_layers):
            if attributes:
                item_streams.append(x)
                attribute_streams.append(sum(attributes[1:], attributes[0]))
            kwargs = {"attribute_inputs": attributes}
            if self.untied_position:
                kwargs["position_inputs"] = position
            if self._applies_hie:
                kwargs["hie_basis"] = self.hie_bases[0 if self.share_hie_basis else i].basis()
            x, side_outputs = block(
                x, attention_mask=causal_mask, training=training, return_side_outputs=True, **kwargs
            )
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
        outputs.update({"sequence_output": x, "item_streams": item_streams, "attribute_streams": attribute_streams})
        if self._applies_hie and self.hie_basis == "soft":
            outputs["orthogonality_penalty"] = sum(basis.orthogonality_penalty() for basis in self.hie_bases)
        return outputs

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "fusion": self.fusion,
                "gate_scorer": self.gate_scorer,
                "use_hie": self.use_hie,
                "update_position_stream": self.update_position_stream,
                "fused_attention": self.fused_attention,
                "hie_rank": self.hie_rank,
                "hie_basis": self.hie_basis,
                "hie_activation": self.hie_activation,
                "share_hie_basis": self.share_hie_basis,
                "untied_position": self.untied_position,
                "update_attribute_stream": self.update_attribute_stream,
                "side_stream_update": self.side_stream_update,
                "score_scale": self.score_scale,
                "tie_output_table": self.tie_output_table,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ASIFBackbone:
        # Version 0.2.0 saved `score_scale` under the name `score_scaling`.
        return super().from_config(rename_config_keys(config, {"score_scaling": "score_scale"}))
