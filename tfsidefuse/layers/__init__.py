"""Shared layers: embeddings, masks, attention and the transformer block."""

from tfsidefuse.layers.decoupled_attention import DecoupledAttention
from tfsidefuse.layers.embedding_fusion import EmbeddingFusion
from tfsidefuse.layers.fused_attention import FusedAttention
from tfsidefuse.layers.item_embedding import ItemEmbedding
from tfsidefuse.layers.item_feature_lookup import ItemFeatureLookup
from tfsidefuse.layers.mask_token_embedding import MaskTokenEmbedding
from tfsidefuse.layers.masks import attention_mask, padding_mask
from tfsidefuse.layers.non_invasive_attention import NonInvasiveAttention
from tfsidefuse.layers.orthogonal_basis import OrthogonalBasis
from tfsidefuse.layers.position_embedding import PositionEmbedding
from tfsidefuse.layers.sampled_softmax import AccidentalHitRemoval, SampledSoftmax
from tfsidefuse.layers.self_attention import SelfAttention
from tfsidefuse.layers.side_feature_embedding import SideFeatureEmbedding
from tfsidefuse.layers.side_fused_attention import SideFusedAttention
from tfsidefuse.layers.side_information_embedding import SideInformationEmbedding
from tfsidefuse.layers.transformer_block import TransformerBlock

__all__ = [
    "AccidentalHitRemoval",
    "DecoupledAttention",
    "EmbeddingFusion",
    "FusedAttention",
    "ItemEmbedding",
    "ItemFeatureLookup",
    "MaskTokenEmbedding",
    "NonInvasiveAttention",
    "OrthogonalBasis",
    "PositionEmbedding",
    "SampledSoftmax",
    "SelfAttention",
    "SideFeatureEmbedding",
    "SideFusedAttention",
    "SideInformationEmbedding",
    "TransformerBlock",
    "attention_mask",
    "padding_mask",
]
