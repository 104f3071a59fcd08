"""RT-DETR modules. Importing this package registers ``RTDETR`` in detectron2's META_ARCH_REGISTRY."""

from .backbone.presnet import PResNet
from .criterion import HungarianMatcher, RTDETRCriterion
from .decoder.rtdetr_decoder import RTDETRTransformer
from .encoder.hybrid_encoder import HybridEncoder
from .meta_arch.rtdetr import RTDETR, TARGET_BOXES_FIELD

__all__ = [
    "PResNet",
    "HybridEncoder",
    "RTDETRTransformer",
    "HungarianMatcher",
    "RTDETRCriterion",
    "RTDETR",
    "TARGET_BOXES_FIELD",
]
