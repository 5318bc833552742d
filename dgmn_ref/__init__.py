"""dgmn_ref: a readable reference of Dynamic Graph Message Passing Networks (CVPR 2020)."""

from dgmn_ref.baselines import ASPP, DeformableMessagePassing, NonLocal2d, NonLocalHead
from dgmn_ref.layer import DGMN, DynamicMessageCalculation, MessageFusion
from dgmn_ref.variants import PAPER_VARIANTS, variant_kwargs

__version__ = "0.1.0"
__all__ = [
    "DGMN",
    "DynamicMessageCalculation",
    "MessageFusion",
    "NonLocal2d",
    "NonLocalHead",
    "DeformableMessagePassing",
    "ASPP",
    "PAPER_VARIANTS",
    "variant_kwargs",
]
