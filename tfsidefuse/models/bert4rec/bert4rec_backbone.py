"""BERT4Rec: the bidirectional, side-information-free Cloze baseline."""

from __future__ import annotations

from typing import Any

import keras

from tfsidefuse.layers.mask_token_embedding import MaskTokenEmbedding, without_mask_token
from tfsidefuse.models.sasrec.sasrec_backbone import SASRecBackbone


@keras.saving.register_keras_serializable(package="tfsidefuse")
class BERT4RecBackbone(SASRecBackbone):
    """BERT4Rec: bidirectional self-attention over item ids, with a `[MASK]` token.

    SASRec's encoder with two changes (docs/models.md#bert4rec): the id `num_items`
    is the `[MASK]` token, embedded by a learned vector `m` (the extra row of
    BERT4Rec's item table), and attention is bidirectional: slot `i` attends
    every real slot `j` (padding mask only). With `e_t = m` if
    `s_t = [MASK]`, else `E_item[s_t]`,

    `X^0 = Dropout(LN(e + P[pos]))`, then `num_layers` post-LN
    `TransformerBlock`s with `allowed(i, j) = [s_j != 0]`,

    positions counted from the oldest real slot (a `[MASK]` slot counts as
    real). `item_table()` is `E_item`, the `num_items` rows that are scored;
    `m` is never a candidate. Train it with `MaskedItemModel` (class
    attribute `task = "cloze"`), which masks items and reads the output at a
    `[MASK]` appended after the history.

    Args:
        num_items: size of the item id space, including the padding id 0 and
            the OOV id 1; `num_items` itself is the `[MASK]` id.
        max_len: number of learned positions (the longest window, `[MASK]`
            slot included).
        hidden_dim: width `d` of embeddings and hidden states.
        num_layers: number of transformer blocks.
        num_heads: attention heads per block; must divide `hidden_dim`.
        ff_dim: width of the feed-forward intermediate layer.
        dropout: dropout rate on the embeddings and the residual branches.
        attention_dropout: dropout rate on the attention probabilities.
        layer_norm_epsilon: epsilon of every layer normalization.
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: dict with `"item_ids"`, int `[batch, seq_len]`, left-padded
            with 0, ids in `[0, num_items]`; other keys are ignored.
        training: bool, whether dropout is active.

    Returns:
        `{"sequence_output": hidden states [batch, seq_len, hidden_dim]}`.

    Example:

    ```python
    backbone = BERT4RecBackbone(num_items=1000, max_len=50, hidden_dim=64)
    hidden = backbone({"item_ids": np.array([[0, 17, 5, 1000]])})["sequence_output"]  # [1, 4, 64]; slot 3 is [MASK]
    model = MaskedItemModel(backbone, mask_prob=0.6)
    ```

    Reference:
        Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional
        Encoder Representations from Transformer", CIKM 2019; the RecBole
        implementation (Zhao et al., CIKM 2021).
    """

    #: Trained by `MaskedItemModel`.
    task = "cloze"
    causal = False

    @property
    def mask_token_id(self) -> int:
        """The id of the `[MASK]` token: `num_items`."""
        return self.num_items

    def build(self, inputs_shape: Any = None) -> None:
        super().build(inputs_shape)
        self.mask_token_embedding = MaskTokenEmbedding(
            self.mask_token_id, self.hidden_dim, dtype=self.dtype_policy, name="mask_token_embedding"
        )
        self.mask_token_embedding.build()
        self.built = True

    def input_embeddings(self, inputs: dict[str, Any], padding_mask: Any) -> Any:
        ids = inputs["item_ids"]
        items = self.mask_token_embedding(self.item_embedding(without_mask_token(ids, self.mask_token_id)), ids)
        return items + self.position_embedding(padding_mask)
