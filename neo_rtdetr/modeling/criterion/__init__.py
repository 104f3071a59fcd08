from .matcher import HungarianMatcher
from .rtdetr_criterion import RTDETRCriterion

__all__ = ["HungarianMatcher", "RTDETRCriterion"]
