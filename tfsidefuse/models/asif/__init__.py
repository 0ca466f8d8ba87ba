"""ASIF: aligned side information fusion (fused attention, HIE) and its alignment head (RSA)."""

from tfsidefuse.models.asif.asif_alignment_head import ASIFAlignmentHead
from tfsidefuse.models.asif.asif_backbone import ASIFBackbone

__all__ = ["ASIFAlignmentHead", "ASIFBackbone"]
