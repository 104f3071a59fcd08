"""RT-DETRv2 modules (only what differs from the neo_rtdetr v1 library)."""

from .hybrid_encoder_v2 import HybridEncoderV2
from .ms_deform_attn_v2 import MSDeformableAttentionV2, discrete_deformable_attention, points_per_level
from .rtdetrv2_criterion import RTDETRCriterionV2
from .rtdetrv2_decoder import RTDETRTransformerV2

__all__ = [
    "HybridEncoderV2",
    "MSDeformableAttentionV2",
    "RTDETRCriterionV2",
    "RTDETRTransformerV2",
    "discrete_deformable_attention",
    "points_per_level",
]
