"""How well two sets of detections of the same image agree (fast paths vs the float32 reference)."""

import torch

from detectron2.structures import Instances, pairwise_iou

__all__ = ["detection_agreement"]


def detection_agreement(
    reference: Instances, candidate: Instances, *, top_k: int = 100, iou_threshold: float = 0.9,
    score_tolerance: float = 0.01,
) -> float:
    """Fraction of the reference's ``top_k`` highest-scoring detections that the candidate reproduces.

    A reference detection is reproduced when some candidate detection has the same class, a box with IoU >=
    ``iou_threshold`` and a score within ``score_tolerance``. The order of near-tied detections does not matter
    (reduced precision reorders them), only that the same detections are there.

    Args:
        reference, candidate: ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes`` (same image).

    Returns:
        a value in [0, 1] (1.0 when the reference has no detection).
    """
    order = torch.argsort(reference.scores, descending=True)[:top_k]
    ref = reference[order]
    if len(ref) == 0:
        return 1.0
    if len(candidate) == 0:
        return 0.0
    iou = pairwise_iou(ref.pred_boxes, candidate.pred_boxes.to(ref.pred_boxes.device))  # [R, C]
    same_class = ref.pred_classes[:, None] == candidate.pred_classes.to(ref.pred_classes.device)[None, :]
    close_score = (ref.scores[:, None] - candidate.scores.to(ref.scores.device)[None, :]).abs() <= score_tolerance
    ok = (iou >= iou_threshold) & same_class & close_score
    return float(ok.any(dim=1).float().mean())
