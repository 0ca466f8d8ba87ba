"""SideFuse: each side feature enters the network where it declares (embedding, query/key, score or late)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from tfsidefuse.layers._checks import check_choice, check_positive_int
from tfsidefuse.layers.decoupled_attention import SCORE_FUSIONS
from tfsidefuse.layers.embedding_fusion import FUSION_MODES, GATE_SCORERS
from tfsidefuse.layers.masks import attention_mask, padding_mask
from tfsidefuse.layers.side_fused_attention import SideFusedAttention
from tfsidefuse.models.side_feature_backbone import SideFeatureBackbone

ENTRY_POINTS = ("embedding", "query_key", "attention_score", "late")
#: Version of the weight names, in `get_config`: 2 since the late features use FDSA's feature tower
#: (`feature_*`, `tower_fusion`); configs without it name the tower's weights otherwise.
WEIGHTS_LAYOUT = 2
#: The key of `entry_points` for the position; it cannot enter late (a feature tower has no item order otherwise).
POSITION = "position"
POSITION_ENTRY_POINTS = ("embedding", "query_key", "attention_score")
#: Preset -> entry point of the item features, the interaction features and the position.
PRESETS = {
    "sasrec_f": ("embedding", "embedding", "embedding"),
    "nova": ("query_key", "query_key", "query_key"),
    "difsr": ("attention_score", "attention_score", "attention_score"),
    "fdsa": ("late", "late", "embedding"),
    "comif": ("embedding", "attention_score", "attention_score"),
}


@keras.saving.register_keras_serializable(package="tfsidefuse")
class SideFuseBackbone(SideFeatureBackbone):
    """One causal encoder in which every side feature enters where `entry_points` says.

    Each side feature `f` (pooled item attribute or interaction feature,
    see `SideInformationEmbedding`) and the position `P` have one entry
    point:

    - `"embedding"` (SASRec_F, COMIF's attributes): fused into the item
      embedding, `x = F_emb(E_id[s], f_1, .., f_e) (+ P)`,
      `H^0 = Dropout(LN(x))` (`x = E_id[s]` when no feature enters here; the
      position is added after the fusion, as RecBole's `SASRecF`).
    - `"query_key"` (NOVA): fused with the item stream of every layer into
      the source of the item queries and keys, `H~ = F_qk(H^l, f.., P)`.
    - `"attention_score"` (DIF-SR, COMIF's behaviours): its own score map
      `(f W^Q_f)(f W^K_f)^T` (width `attribute_hidden_dim`), fused with the
      item map `(H~ W^Q)(H~ W^K)^T` by `F_s` before the softmax.
    - `"late"` (FDSA): FDSA's feature tower (`build_feature_tower`, the
      same code as `FDSABackbone`, with its own LayerNorms) of
      `late_num_layers` causal `TransformerBlock`s over
      `G^0 = Dropout(LN(F_emb(f..) + P))` (a single feature enters as it is
      under `"add"` and `"gate"` fusion), joined at the output,
      `H = Dropout(LN([H^L || G^L] W^o + b^o))`.

    Every layer `l` is a post-LN `TransformerBlock` around a
    `SideFusedAttention`; values always come from the item stream `H^l`,
    and the side embeddings are the same in every layer. Hidden states are
    scored against `E_id`. A `preset` names a paper's assignment:
    `"sasrec_f"` (everything at the embedding), `"nova"` (everything at the
    queries/keys), `"difsr"` (everything, position included, at the scores),
    `"fdsa"` (features late, position at the embedding), `"comif"` (item
    features at the embedding, interaction features and position at the
    scores); entries of `entry_points` override it. The presets share the
    mechanism, not every detail of the papers (auxiliary losses, COMIF's
    fused prediction table, FDSA's shared LayerNorm are left out).

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1.
        max_len: number of learned positions, and the key-row length of
            concat and gate score fusion (the longest window).
        item_features: item-level features, dicts `{"name", "vocab_size",
            "max_values"}`; their tables are assigned with
            `set_item_feature_tables`.
        interaction_features: interaction-level features, dicts `{"name",
            "vocab_size"}`, read from the inputs under their names.
        entry_points: dict feature name (or `"position"`) -> `"embedding"`,
            `"query_key"`, `"attention_score"` or `"late"` (not for the
            position); overrides the preset.
        default_entry: entry point of the features that neither
            `entry_points` nor the preset assign. The position defaults to
            `"embedding"`.
        preset: `None` or a key of `PRESETS`.
        hidden_dim: width `d` of the item stream and hidden states.
        num_layers: number of transformer blocks of the item encoder.
        num_heads: attention heads per block; must divide `hidden_dim`.
        ff_dim: width of the feed-forward intermediate layers.
        dropout: dropout rate on the embeddings, residual branches and output.
        attention_dropout: dropout rate on the attention probabilities.
        layer_norm_epsilon: epsilon of every layer normalization.
        fusion: `F_emb`, `"add"`, `"concat"` or `"gate"`, the embedding-level
            fusion (input and feature tower).
        query_key_fusion: `F_qk`, `"add"`, `"concat"` or `"gate"`.
        score_fusion: `F_s`, `"sum"`, `"concat"` or `"gate"` (see
            `DecoupledAttention`).
        attribute_hidden_dim: width of the embeddings of the
            `"attention_score"` features (at least `num_heads`); `None` gives
            `hidden_dim`.
        late_num_layers: number of blocks of the feature tower; `None` gives
            `num_layers`.
        pooling: `"sum"`, `"mean"` or `"max"`, pooling of multi-valued item
            features.
        gate_scorer: `"linear"` or `"mlp"`, the scorer of `"gate"` `F_emb`
            and `F_qk`.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"`, int `[batch, seq_len]` left-padded
            with 0 (`seq_len <= max_len`), and one int `[batch, seq_len]`
            entry per interaction feature, keyed by its name; other keys are
            ignored.
        training: bool, whether dropout is active.

    Returns:
        `{"sequence_output": hidden states [batch, seq_len, hidden_dim]}`.

    Example:

    ```python
    backbone = SideFuseBackbone(
        num_items=1000,
        item_features=[{"name": "category", "vocab_size": 60, "max_values": 1},
                       {"name": "brand", "vocab_size": 80, "max_values": 1}],
        interaction_features=[{"name": "action", "vocab_size": 5}],
        entry_points={"brand": "attention_score", "action": "query_key", "position": "attention_score"},
    )  # category enters at the embedding (default_entry)
    backbone.set_item_feature_tables({"category": category_table, "brand": brand_table})
    hidden = backbone({"item_ids": np.array([[0, 17, 5]]), "action": np.array([[0, 2, 3]])})["sequence_output"]
    model = NextItemModel(backbone)
    ```

    Reference:
        Kim et al., "Exploring the Side-Information Fusion for Sequential
        Recommendation", IEEE Access (COMIF: fusion level per kind of side
        information); Liu et al., AAAI 2021 (NOVA); Xie et al., SIGIR 2022
        (DIF-SR); Zhang et al., IJCAI 2019 (FDSA); Kang & McAuley, ICDM 2018
        (SASRec).
    """

    #: Whether slot `i` attends only the slots `j <= i` (both towers).
    causal = True

    def __init__(
        self,
        num_items: int,
        max_len: int = 50,
        item_features: Sequence[Mapping[str, Any]] = (),
        interaction_features: Sequence[Mapping[str, Any]] = (),
        entry_points: Mapping[str, str] | None = None,
        default_entry: str = "embedding",
        preset: str | None = None,
        hidden_dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        ff_dim: int = 256,
        dropout: float = 0.5,
        attention_dropout: float = 0.5,
        layer_norm_epsilon: float = 1e-12,
        fusion: str = "add",
        query_key_fusion: str = "gate",
        score_fusion: str = "sum",
        attribute_hidden_dim: int | None = None,
        late_num_layers: int | None = None,
        pooling: str = "sum",
        gate_scorer: str = "linear",
        **kwargs: Any,
    ) -> None:
        check_positive_int("num_layers", num_layers, allow_bool=False)
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
        check_choice("default_entry", default_entry, ENTRY_POINTS)
        if preset is not None:
            check_choice("preset", preset, tuple(PRESETS))
        check_choice("fusion", fusion, FUSION_MODES)
        check_choice("query_key_fusion", query_key_fusion, FUSION_MODES)
        check_choice("score_fusion", score_fusion, SCORE_FUSIONS)
        check_choice("gate_scorer", gate_scorer, GATE_SCORERS)
        if attribute_hidden_dim is not None and (
            isinstance(attribute_hidden_dim, bool)
            or not isinstance(attribute_hidden_dim, int)
            or attribute_hidden_dim < num_heads
        ):
            raise ValueError(
                f"`attribute_hidden_dim` must be None or an int >= num_heads={num_heads}. "
                f"Received: attribute_hidden_dim={attribute_hidden_dim!r}"
            )
        if late_num_layers is not None:
            check_positive_int("late_num_layers", late_num_layers, allow_bool=False)
        self.entry_points = dict(self._check_entry_points(entry_points))
        self.default_entry = default_entry
        self.preset = preset
        self.fusion = fusion
        self.query_key_fusion = query_key_fusion
        self.score_fusion = score_fusion
        self.attribute_hidden_dim = attribute_hidden_dim
        self.late_num_layers = late_num_layers
        self.gate_scorer = gate_scorer

    def _check_entry_points(self, entry_points: Any) -> Mapping[str, str]:
        names = [feature["name"] for feature in self.item_features + self.interaction_features]
        if POSITION in names:
            raise ValueError(f"No side feature may be named {POSITION!r}: it is the key of the position.")
        if entry_points is None:
            return {}
        if not isinstance(entry_points, Mapping):
            raise ValueError(
                f"`entry_points` must be a dict feature name -> entry point. Received: entry_points={entry_points!r}"
            )
        for key, value in entry_points.items():
            if key != POSITION and key not in names:
                raise ValueError(
                    f"`entry_points` names an unknown feature: {key!r} (entry {value!r}); "
                    f"the side features are {names}, plus {POSITION!r}"
                )
            allowed = POSITION_ENTRY_POINTS if key == POSITION else ENTRY_POINTS
            if value not in allowed:
                raise ValueError(f"`entry_points[{key!r}]` must be one of {allowed}. Received: {key}={value!r}")
        return entry_points

    @property
    def resolved_entry_points(self) -> dict[str, str]:
        """The entry point of every side feature and of `"position"`: default, then preset, then `entry_points`."""
        resolved = {feature["name"]: self.default_entry for feature in self.item_features + self.interaction_features}
        resolved[POSITION] = "embedding"
        if self.preset is not None:
            item_entry, interaction_entry, position_entry = PRESETS[self.preset]
            resolved.update({feature["name"]: item_entry for feature in self.item_features})
            resolved.update({feature["name"]: interaction_entry for feature in self.interaction_features})
            resolved[POSITION] = position_entry
        resolved.update(self.entry_points)
        return resolved

    def features_at(self, entry: str) -> list[str]:
        """Names of the side features entering at `entry`, item features first, in declaration order."""
        resolved = self.resolved_entry_points
        return [
            feature["name"]
            for feature in self.item_features + self.interaction_features
            if resolved[feature["name"]] == entry
        ]

    @property
    def _score_width(self) -> int:
        return self.hidden_dim if self.attribute_hidden_dim is None else self.attribute_hidden_dim

    def build_side_embeddings(self) -> None:
        embedding, query_key, score, late = (self.features_at(entry) for entry in ENTRY_POINTS)
        # Score-map features have their own (DIF-SR: smaller) width; all others are fused with width-d tensors.
        self.side_information_embedding = self.make_side_information_embedding(
            embedding + query_key + late, self.hidden_dim, "side_information_embedding"
        )
        self.score_information_embedding = self.make_side_information_embedding(
            score, self._score_width, "score_information_embedding"
        )
        if embedding:
            self.embedding_fusion = self.make_embedding_fusion(
                self.fusion, 1 + len(embedding), "embedding_fusion", self.gate_scorer
            )

    def block_attention(self, index: int) -> SideFusedAttention:
        position_entry = self.resolved_entry_points[POSITION]
        return SideFusedAttention(
            self.hidden_dim,
            self.num_heads,
            num_query_key_features=len(self.features_at("query_key")) + int(position_entry == "query_key"),
            score_dims=[self._score_width] * len(self.features_at("attention_score")),
            use_position=position_entry == "attention_score",
            query_key_fusion=self.query_key_fusion,
            score_fusion=self.score_fusion,
            gate_scorer=self.gate_scorer,
            max_len=self.max_len,
            dropout=self.attention_dropout,
            dtype=self.dtype_policy,
            name="side_fused_attention",
        )

    def build(self, inputs_shape: Any = None) -> None:
        super().build(inputs_shape)
        late = self.features_at("late")
        if late:
            self.build_feature_tower(len(late), self.fusion, self.gate_scorer, num_layers=self.late_num_layers)
        self.built = True

    def set_item_feature_tables(self, tables: Mapping[str, Any]) -> None:
        """Assigns the item id -> attribute ids table of every item feature.

        Builds the backbone if needed and hands each table to the
        `SideInformationEmbedding` that embeds the feature, which validates
        it.

        Args:
            tables: dict feature name -> integer array `[num_items,
                max_values]` with an all-zero row 0, one per item feature.

        Raises:
            ValueError: on a missing or unknown feature name, or a bad table.
        """
        if not self.built:
            self.build()
        names = [feature["name"] for feature in self.item_features]
        if not isinstance(tables, Mapping):
            raise ValueError(f"`tables` must be a dict feature name -> array. Received: {type(tables).__name__}")
        unknown = sorted(set(tables) - set(names))
        missing = [name for name in names if name not in tables]
        if unknown or missing:
            raise ValueError(
                f"`tables` must hold one table per item feature {names}. "
                f"Received unknown item feature(s) {unknown}, lacks the item feature(s) {missing}"
            )
        for layer in (self.side_information_embedding, self.score_information_embedding):
            layer.set_item_feature_tables({feature["name"]: tables[feature["name"]] for feature in layer.item_features})

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        position_entry = self.resolved_entry_points[POSITION]
        embedding, query_key, score, late = (self.features_at(entry) for entry in ENTRY_POINTS)
        item_ids = inputs["item_ids"]
        mask = padding_mask(item_ids)
        # Indexed by name: the order of the fusion inputs must not depend on how dicts are traced.
        side = {**self.side_information_embedding(inputs), **self.score_information_embedding(inputs)}
        position = self.position_embedding(mask)
        x = self.item_embedding(item_ids)
        if embedding:
            x = self.embedding_fusion([x] + [side[name] for name in embedding])
        if position_entry == "embedding":
            x = x + position
        x = self.normalize_embeddings(x, training)
        causal_mask = attention_mask(mask, causal=self.causal)
        query_key_inputs = [side[name] for name in query_key] + ([position] if position_entry == "query_key" else [])
        for block in self.transformer_layers:
            x = block(
                x,
                attention_mask=causal_mask,
                query_key_inputs=query_key_inputs,
                score_inputs=[side[name] for name in score],
                position_inputs=position if position_entry == "attention_score" else None,
                training=training,
            )
        if not late:
            return {"sequence_output": x}
        output = self.feature_tower_output(x, [side[name] for name in late], position, mask, training)
        return {"sequence_output": output}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SideFuseBackbone:
        config = dict(config)
        if config.pop("weights_layout", None) != WEIGHTS_LAYOUT:
            # Written before the feature tower was FDSA's: its weights had other names and would not load.
            backbone = cls(**config)
            if backbone.features_at("late"):
                raise ValueError(
                    "This SideFuseBackbone config was saved by tfsidefuse 0.2.0 or earlier with late features "
                    f"{backbone.features_at('late')}: their tower's weights were stored under other names and "
                    "cannot be loaded. Train the model again."
                )
            return backbone
        return cls(**config)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "weights_layout": WEIGHTS_LAYOUT,
                "entry_points": dict(self.entry_points),
                "default_entry": self.default_entry,
                "preset": self.preset,
                "fusion": self.fusion,
                "query_key_fusion": self.query_key_fusion,
                "score_fusion": self.score_fusion,
                "attribute_hidden_dim": self.attribute_hidden_dim,
                "late_num_layers": self.late_num_layers,
                "gate_scorer": self.gate_scorer,
            }
        )
        return config
