"""Backbones (one per paper), the auxiliary heads of their papers' objectives, and the tasks."""

from tfsidefuse.models.asif import ASIFAlignmentHead, ASIFBackbone
from tfsidefuse.models.auxiliary_head import AuxiliaryHead
from tfsidefuse.models.backbone import Backbone
from tfsidefuse.models.bert4rec import BERT4RecBackbone
from tfsidefuse.models.comif import COMIFAlignmentHead, COMIFBackbone
from tfsidefuse.models.difsr import DIFSRAttributeHead, DIFSRBackbone
from tfsidefuse.models.fdsa import FDSABackbone
from tfsidefuse.models.masked_item_model import MaskedItemModel
from tfsidefuse.models.next_item_model import NextItemModel
from tfsidefuse.models.nova import NOVABackbone
from tfsidefuse.models.nova_bert import NOVABERTBackbone
from tfsidefuse.models.sasrec import SASRecBackbone
from tfsidefuse.models.sasrec_f import SASRecFBackbone
from tfsidefuse.models.sidefuse import SideFuseBackbone

__all__ = [
    "ASIFAlignmentHead",
    "ASIFBackbone",
    "AuxiliaryHead",
    "Backbone",
    "BERT4RecBackbone",
    "COMIFAlignmentHead",
    "COMIFBackbone",
    "DIFSRAttributeHead",
    "DIFSRBackbone",
    "FDSABackbone",
    "MaskedItemModel",
    "NextItemModel",
    "NOVABackbone",
    "NOVABERTBackbone",
    "SASRecBackbone",
    "SASRecFBackbone",
    "SideFuseBackbone",
]
