"""SASRec_F: SASRec with side information fused into the input embedding."""

from tfsidefuse.models.sasrec_f.sasrec_f_backbone import SASRecFBackbone

__all__ = ["SASRecFBackbone"]
