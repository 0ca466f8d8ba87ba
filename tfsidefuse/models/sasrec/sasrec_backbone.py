"""SASRec: the side-information-free baseline."""

from __future__ import annotations

from typing import Any

import keras

from tfsidefuse.layers._checks import check_choice, check_positive_int, check_transformer_args
from tfsidefuse.layers.item_embedding import ItemEmbedding
from tfsidefuse.layers.masks import attention_mask, padding_mask
from tfsidefuse.layers.position_embedding import POSITION_ORDERS, PositionEmbedding
from tfsidefuse.layers.transformer_block import TransformerBlock
from tfsidefuse.models.backbone import Backbone


@keras.saving.register_keras_serializable(package="tfsidefuse")
class SASRecBackbone(Backbone):
    """SASRec: causal self-attention over item ids and learned positions.

    `X^0 = Dropout(LN(E_item[s] + P[pos]))`, with positions counted from the
    oldest real item of the window (no `sqrt(d)` scaling, as RecBole; or from
    the newest, `position_order="newest_first"`, as the original SASRec), then
    `num_layers` post-LN `TransformerBlock`s with the causal mask: slot `t`
    attends the real items at slots `<= t`. The output `[batch, seq_len,
    hidden_dim]` is read out by `NextItemModel` against the item embedding.

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1.
        max_len: number of learned positions (the longest window).
        hidden_dim: width `d` of embeddings and hidden states.
        num_layers: number of transformer blocks.
        num_heads: attention heads per block; must divide `hidden_dim`.
        ff_dim: width of the feed-forward intermediate layer.
        dropout: dropout rate on the embeddings and the residual branches.
        attention_dropout: dropout rate on the attention probabilities.
        layer_norm_epsilon: epsilon of every layer normalization.
        position_order: `"oldest_first"` (position 0 is the oldest item of the
            window, RecBole) or `"newest_first"` (position 0 is the latest
            item); see `PositionEmbedding`.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"`, int `[batch, seq_len]`, left-padded
            with 0; other keys are ignored.
        training: bool, whether dropout is active.
        last_position_only: bool, return the hidden state of the last slot
            only, `[batch, 1, hidden_dim]`: the last block runs its query,
            feed-forward and normalisation for that slot alone (the values
            of the full call's last slot). `NextItemModel` uses it for
            last-position scoring.

    Returns:
        `{"sequence_output": hidden states [batch, seq_len, hidden_dim]}`
        (`[batch, 1, hidden_dim]` with `last_position_only`).

    Example:

    ```python
    backbone = SASRecBackbone(num_items=1000, max_len=50, hidden_dim=64)
    hidden = backbone({"item_ids": np.array([[0, 0, 17, 5, 42]])})["sequence_output"]  # [1, 5, 64]
    model = NextItemModel(backbone)
    ```

    Reference:
        Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018;
        the RecBole implementation (Zhao et al., CIKM 2021).
    """

    #: Whether slot `i` attends only the slots `j <= i`; a bidirectional variant sets it to `False`.
    causal = True

    def __init__(
        self,
        num_items: int,
        max_len: int = 50,
        hidden_dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        ff_dim: int = 256,
        dropout: float = 0.5,
        attention_dropout: float = 0.5,
        layer_norm_epsilon: float = 1e-12,
        position_order: str = "oldest_first",
        **kwargs: Any,
    ) -> None:
        super().__init__(num_items=num_items, hidden_dim=hidden_dim, max_len=max_len, **kwargs)
        check_positive_int("num_layers", num_layers)
        check_transformer_args(hidden_dim, num_heads, ff_dim, dropout, attention_dropout, layer_norm_epsilon)
        check_choice("position_order", position_order, POSITION_ORDERS)
        self.position_order = position_order
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, inputs_shape: Any = None) -> None:
        self.build_embeddings()
        self.transformer_layers = self.build_transformer_layers()
        self.built = True

    def build_embeddings(self) -> None:
        """Creates the input sublayers, in this order (the order of the weights).

        `build_item_tables` (`item_embedding`), `position_embedding`,
        `build_side_embeddings` (nothing here), then `embeddings_layer_norm`
        when `normalizes_embeddings` and `embeddings_dropout`.
        """
        self.build_item_tables()
        self.position_embedding = PositionEmbedding(
            self.max_len,
            self.hidden_dim,
            order=self.position_order,
            dtype=self.dtype_policy,
            name="position_embedding",
        )
        self.position_embedding.build()
        self.build_side_embeddings()
        if self.normalizes_embeddings:
            self.embeddings_layer_norm = self.make_layer_norm("embeddings_layer_norm")
        self.embeddings_dropout = self.make_dropout("embeddings_dropout")

    def build_item_tables(self) -> None:
        """Creates `item_embedding`; a backbone with more item tables adds them here."""
        self.item_embedding = self.make_item_embedding("item_embedding")

    def build_side_embeddings(self) -> None:
        """Creates the sublayers that embed side information, between the position embedding and the layer norm."""

    @property
    def normalizes_embeddings(self) -> bool:
        """Whether the input embeddings go through `embeddings_layer_norm` before their dropout."""
        return True

    def block_attention(self, index: int) -> keras.layers.Layer | None:
        """The attention component of transformer block `index`; `None` gives the block its own `SelfAttention`."""
        return None

    def build_transformer_layers(
        self, prefix: str = "transformer_layer", num_layers: int | None = None, custom_attention: bool = True
    ) -> list[TransformerBlock]:
        """A stack of built `TransformerBlock`s named `{prefix}_{i}`.

        Args:
            prefix: name prefix of the blocks.
            num_layers: number of blocks; `None` gives `self.num_layers`.
            custom_attention: give block `i` the attention `block_attention(i)`;
                `False` keeps the plain `SelfAttention` (e.g. a feature tower).

        Returns:
            The blocks, in order.
        """
        num_layers = self.num_layers if num_layers is None else num_layers
        return [
            self.make_transformer_block(f"{prefix}_{i}", self.block_attention(i) if custom_attention else None)
            for i in range(num_layers)
        ]

    def make_transformer_block(self, name: str, attention: keras.layers.Layer | None = None) -> TransformerBlock:
        """A built `TransformerBlock` with this backbone's widths, rates and epsilon."""
        block = TransformerBlock(
            self.hidden_dim,
            self.num_heads,
            self.ff_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
            attention=attention,
            dtype=self.dtype_policy,
            name=name,
        )
        block.build((None, None, self.hidden_dim))
        return block

    def make_item_embedding(self, name: str) -> ItemEmbedding:
        """A built `ItemEmbedding` of `num_items` rows of width `hidden_dim`."""
        embedding = ItemEmbedding(self.num_items, self.hidden_dim, dtype=self.dtype_policy, name=name)
        embedding.build()
        return embedding

    def make_layer_norm(self, name: str) -> keras.layers.LayerNormalization:
        """A built layer normalization over `hidden_dim` with `layer_norm_epsilon`."""
        layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )
        layer_norm.build((None, None, self.hidden_dim))
        return layer_norm

    def make_dropout(self, name: str, rate: float | None = None) -> keras.layers.Dropout:
        """A dropout layer with rate `rate`, `dropout` when `None`."""
        return keras.layers.Dropout(self.dropout if rate is None else rate, dtype=self.dtype_policy, name=name)

    def input_embeddings(self, inputs: dict[str, Any], padding_mask: Any) -> Any:
        """The per-slot input `x + P` of the encoder, before its layer norm and dropout.

        SASRec adds item and position embeddings; backbones that differ from
        SASRec only by their input (SASRec_F) override this method.

        Args:
            inputs: the call's input dict.
            padding_mask: bool `[batch, seq_len]`, `True` at real items.

        Returns:
            `[batch, seq_len, hidden_dim]`.
        """
        return self.item_embedding(inputs["item_ids"]) + self.position_embedding(padding_mask)

    def normalize_embeddings(self, x: Any, training: bool | None = None) -> Any:
        """`Dropout(LN(x))` of the input embeddings `x` (`Dropout(x)` when not `normalizes_embeddings`)."""
        if self.normalizes_embeddings:
            x = self.embeddings_layer_norm(x)
        return self.embeddings_dropout(x, training=training)

    def call(self, inputs: dict[str, Any], training: bool | None = None, last_position_only: bool = False) -> Any:
        mask = padding_mask(inputs["item_ids"])
        x = self.input_embeddings(inputs, mask)
        x = self.normalize_embeddings(x, training)
        allowed = attention_mask(mask, causal=self.causal)
        for block, last_query_only in self.blocks_with_last_query(last_position_only):
            x = block(x, attention_mask=allowed, training=training, last_query_only=last_query_only)
        return {"sequence_output": x}

    def blocks_with_last_query(self, last_position_only: bool) -> list[tuple[Any, bool]]:
        """`(block, last_query_only)` in order: only the last block runs at the last slot alone, if asked."""
        last = len(self.transformer_layers) - 1
        return [(block, last_position_only and i == last) for i, block in enumerate(self.transformer_layers)]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "ff_dim": self.ff_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "position_order": self.position_order,
            }
        )
        return config
