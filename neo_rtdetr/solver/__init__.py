"""Optimizer helpers: regex-rule parameter groups (RT-DETR style)."""

from .param_groups import (
    RTDETR_R18_RULES,
    RTDETR_R50_RULES,
    RTDETR_R101_RULES,
    build_param_groups,
    rtdetr_v1_rules,
)

__all__ = [
    "build_param_groups",
    "rtdetr_v1_rules",
    "RTDETR_R18_RULES",
    "RTDETR_R50_RULES",
    "RTDETR_R101_RULES",
]
