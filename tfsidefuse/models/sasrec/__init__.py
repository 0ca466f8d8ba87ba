"""SASRec (Kang & McAuley, ICDM 2018)."""

from tfsidefuse.models.sasrec.sasrec_backbone import SASRecBackbone

__all__ = ["SASRecBackbone"]
