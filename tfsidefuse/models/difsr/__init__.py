"""DIF-SR: decoupled side-information fusion in the attention scores, and its attribute predictors."""

from tfsidefuse.models.difsr.difsr_attribute_head import DIFSRAttributeHead
from tfsidefuse.models.difsr.difsr_backbone import DIFSRBackbone

__all__ = ["DIFSRAttributeHead", "DIFSRBackbone"]
