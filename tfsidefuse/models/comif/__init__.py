"""COMIF: attributes fused at the embedding level, behaviours at the attention level, and IAA and UPA."""

from tfsidefuse.models.comif.comif_alignment_head import COMIFAlignmentHead
from tfsidefuse.models.comif.comif_backbone import COMIFBackbone

__all__ = ["COMIFAlignmentHead", "COMIFBackbone"]
